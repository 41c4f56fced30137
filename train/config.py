"""TrainConfig: everything one training run needs, as a frozen dataclass.

The CLI fills it (file values first, then flags that were given); nothing below the CLI sees
Typer. The whole config is stored in every checkpoint sidecar.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CHOICES = {
    "optimizer": ("adam", "adamw", "sgd"),
    "scheduler": ("none", "cosine", "cosine-restarts", "plateau", "onecycle"),
    "loss": ("ce", "focal", "cmaen"),
    "class_weights": ("none", "balanced"),
    "channels_last": ("auto", "on", "off"),
    # light/strong: ours; cmaen/miniaffectgpt/affectfusion: the seeds' own lists (train/transforms.py)
    "augment": ("none", "light", "strong", "cmaen", "miniaffectgpt", "affectfusion"),
    "select_metric": ("uar", "acc", "f1"),
    "device": ("auto", "cpu", "cuda"),
    "preset": ("7", "5", "4", "2"),
    "amp_dtype": ("bf16", "fp16"),
    "targets": ("labels", "votes"),
}


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class TrainConfig:
    manifest: str
    model: str
    val: str | None = None
    out: str = "runs/train"
    preset: str = "7"
    # train on another label set's classes (mapped by canonical name; rows of classes it lacks
    # are dropped), e.g. a FER+ manifest as FER2013's 7 classes
    classes: str | None = None
    # labels: the manifest's (majority) label; votes: FER+ vote distributions as probability
    # targets (Barsoum et al. 2016's probability-distribution scheme), needs ferplus_votes
    targets: str = "labels"
    vote_weight: float = 1.0  # --targets votes: w * votes + (1 - w) * one-hot(manifest label)
    text_features: str | None = None
    image_features: str | None = None
    # model options forwarded to the registry's model_config (None values keep its defaults)
    model_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"
    scheduler: str = "cosine"
    warmup: int = 0  # epochs of linear warm-up before the scheduler
    weight_decay: float = 1e-4
    momentum: float = 0.9
    label_smoothing: float = 0.0
    focal_gamma: float = 2.0
    loss: str = "ce"
    class_weights: str = "none"
    clip_grad: float | None = None
    amp: bool = False
    amp_dtype: str = "bf16"  # fp16 (with a GradScaler) only on CUDA; the CPU autocasts to bf16
    channels_last: str = "auto"
    augment: str = "light"
    augment_group: int = 8
    early_stop: int | None = None
    select_metric: str = "uar"
    seed: int = 0
    resume: bool = False
    device: str = "auto"
    workers: int = 2
    threads: int | None = None  # torch intra-op threads; None keeps torch's default (all cores)
    max_steps: int | None = None  # stop each epoch after this many steps (smoke tests)
    frames: int | None = None  # clip length for video models (None: the model's default)
    tensorboard: bool = False
    # schedule details the seeds set (all off by default: the plain schedules stay as they were)
    min_lr: float = 0.0  # floor of cosine / cosine-restarts (eta_min; CMAEN 1e-6, CLIP seed 1e-6)
    restart_period: int | None = None  # first cycle, epochs (None: (epochs - warmup) // 3)
    restart_mult: float = 1.0  # each cycle's cosine part is this times the previous one's
    restart_decay: float = 1.0  # each cycle's peak LR is this times the previous one's
    restart_warmup: int = 0  # epochs of linear warm-up from the floor at the start of each cycle
    plateau_patience: int = 2  # plateau: epochs without a better val metric before a cut
    plateau_factor: float = 0.5  # plateau: the cut
    # evaluation-time resize of the shorter side, then a centre crop to the model's input
    # (torchvision Resize(n) + CenterCrop(size)); carried in the checkpoint's preprocessing
    eval_resize: int | None = None
    # the recipe this run started from (train/recipes/<name>.toml) and that file's sha256
    recipe: str | None = None
    recipe_sha256: str | None = None
    # knowledge distillation (Hinton et al. 2015): a trained checkpoint whose softened outputs
    # the student also learns from; loss = (1 - alpha) * hard loss + alpha * T^2 * KL
    teacher: str | None = None
    # start from this trained checkpoint's weights (same model and config): fine-tuning, e.g. on
    # cleaner labels; recorded in the sidecar with its sha256
    init: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            v = str(getattr(self, name))
            if v not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} {v!r} is not one of {', '.join(allowed)}")
        object.__setattr__(self, "preset", str(self.preset))
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"--lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"--label-smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup < 0 or (self.warmup and self.warmup >= self.epochs):
            raise ConfigError(f"--warmup ({self.warmup}) must be smaller than --epochs ({self.epochs})")
        if not 0 <= self.vote_weight <= 1:
            raise ConfigError(f"--vote-weight must be in [0, 1], got {self.vote_weight}")
        if self.targets == "votes" and self.loss != "ce":
            raise ConfigError(f"--targets votes trains against probability targets with "
                              f"cross-entropy; --loss {self.loss} takes hard labels only (use --loss ce)")
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"--distill-alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill-temperature must be > 0, got {self.distill_temperature}")
        if not 0 <= self.min_lr < self.lr:
            raise ConfigError(f"--min-lr must be in [0, --lr={self.lr}), got {self.min_lr}")
        if self.restart_period is not None and self.restart_period <= self.restart_warmup:
            raise ConfigError(f"--restart-period ({self.restart_period}) must be longer than "
                              f"--restart-warmup ({self.restart_warmup})")
        if self.restart_mult < 1 or not 0 < self.restart_decay <= 1 or self.restart_warmup < 0:
            raise ConfigError("--restart-mult must be >= 1, --restart-decay in (0, 1], "
                              "--restart-warmup >= 0")
        if self.plateau_patience < 0 or not 0 < self.plateau_factor < 1:
            raise ConfigError(f"--plateau-patience must be >= 0 and --plateau-factor in (0, 1), got "
                              f"{self.plateau_patience} / {self.plateau_factor}")
        if self.eval_resize is not None and self.eval_resize < 8:
            raise ConfigError(f"--eval-resize must be >= 8 pixels, got {self.eval_resize}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A JSON or TOML file of TrainConfig fields (dashes or underscores); unknown keys are an error."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"--config {p} does not exist")
    try:
        if p.suffix == ".toml":
            data = tomllib.loads(p.read_text())
        elif p.suffix == ".json":
            data = json.loads(p.read_text())
        else:
            raise ConfigError(f"--config {p}: use a .json or .toml file")
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"--config {p}: cannot parse ({e})") from None
    data = {k.replace("-", "_"): v for k, v in data.items()}
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"--config {p}: unknown key(s) {unknown}; known: {', '.join(sorted(known))}")
    return data


# models that train with a loss of their own (FERModel.loss); another loss must be asked for
OWN_LOSS = {"cmaen": "cmaen"}


def make_config(config_file: str | Path | None = None, recipe: str | None = None,
                **flags: Any) -> TrainConfig:
    """Recipe values, then the config file's, then every flag that is not None on top (unset
    flags keep recipe/file/defaults). `recipe` is a name from train/recipes/ (`train recipes`);
    the config records it and the recipe file's sha256.

    Raises ConfigError for a missing manifest/model, unknown keys, or a model with a loss of its
    own (cmaen) left on the default loss: pass --loss cmaen, or another --loss on purpose."""
    data: dict[str, Any] = {}
    if recipe:
        from train.recipes import load_recipe

        r = load_recipe(recipe)
        data.update(r.values)
        data["recipe"], data["recipe_sha256"] = r.name, r.sha256
    file_data = read_config_file(config_file) if config_file else {}
    if "model_options" in file_data and "model_options" in data:
        file_data["model_options"] = {**data["model_options"], **file_data["model_options"]}
    data.update(file_data)
    flags = {k: v for k, v in flags.items() if v is not None}
    if "model_options" in flags and "model_options" in data:  # per key, over the recipe's
        flags["model_options"] = {**data["model_options"], **flags["model_options"]}
    data.update(flags)
    for req in ("manifest", "model"):
        if not data.get(req):
            raise ConfigError(f"--{req} is required (as a flag or in the --config file)")
    own = OWN_LOSS.get(data["model"])
    if own and "loss" not in data:
        raise ConfigError(f"--model {data['model']} trains with its own loss: pass --loss {own} "
                          f"(the seed's), or --loss ce / focal to train it on that loss instead")
    return TrainConfig(**data)
