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
    "augment": ("none", "light", "framing", "strong", "cmaen", "miniaffectgpt", "affectfusion"),
    "select_metric": ("uar", "acc", "f1"),
    "device": ("auto", "cpu", "cuda"),
    "preset": ("7", "5", "4", "2"),
    "amp_dtype": ("bf16", "fp16"),
    "targets": ("labels", "votes"),
}


class ConfigError(ValueError):
    pass


def option(default: Any = dataclasses.MISSING, help: str | None = None, *, path: bool = False,
           decls: tuple[str, ...] = (), name: str | None = None, **kw) -> Any:
    """A TrainConfig field that is also a `train run` option: `train/commands/run.py` builds the
    command's options from these, in field order (Typer's `Option(help=...)`; `path` shows it as a
    PATH, `decls` spells the flag, e.g. `--amp/--no-amp`; `name` is the CLI parameter when it
    differs from the field). Fields made with plain `field()` are config-file/recipe only."""
    meta = {"option": {"help": help, "path": path, "decls": decls, "name": name}}
    return field(default=default, metadata=meta, **kw)


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings. The order of the option fields is `train run --help`'s order."""

    manifest: str = option(help="Training manifest (split=train rows).", path=True)
    model: str = option(help="Registered model name (`train models` lists them).")
    val: str | None = option(None, "Validation manifest; default: *_val beside *_train.", path=True)
    # the recipe this run started from (train/recipes/<name>.toml) and that file's sha256
    recipe: str | None = option(None, "A seed's recipe (`train recipes` lists them); --config and flags "
                                      "override it.")
    recipe_sha256: str | None = None
    preset: str = option("7", "Label preset 7|5|4|2.")
    # train on another label set's classes (mapped by canonical name; rows of classes it lacks
    # are dropped), e.g. a FER+ manifest as FER2013's 7 classes
    classes: str | None = option(None, "Train on this label set's classes (e.g. fer2013 on a FER+ "
                                       "manifest: contempt rows dropped).")
    # labels: the manifest's (majority) label; votes: FER+ vote distributions as probability
    # targets (Barsoum et al. 2016's probability-distribution scheme), needs ferplus_votes
    targets: str = option("labels", "labels | votes (FER+ vote distributions as probability targets).")
    vote_weight: float = option(1.0, "With --targets votes: w*votes + (1-w)*one-hot label.")
    text_features: str | None = option(None, "Caption feature file (sample_id, vector[, tokens]).", path=True)
    image_features: str | None = option(None, "Image feature file, for feature-input models.", path=True)
    # model options forwarded to the registry's model_config (None values keep its defaults)
    model_options: dict[str, Any] = option(help="Model config override key=value (repeat).",
                                           name="model_opt", default_factory=dict)
    epochs: int = option(10)
    batch_size: int = option(64)
    lr: float = option(1e-3)
    optimizer: str = option("adamw", "adam | adamw | sgd")
    scheduler: str = option("cosine", "none | cosine | cosine-restarts | plateau | onecycle")
    warmup: int = option(0, "Epochs of linear warm-up.")  # before the scheduler
    weight_decay: float = option(1e-4)
    momentum: float = 0.9
    label_smoothing: float = option(0.0)
    focal_gamma: float = 2.0
    loss: str = option("ce", "ce | focal | cmaen (the model's own loss)")
    class_weights: str = option("none", "none | balanced")
    clip_grad: float | None = option(None, "Max gradient norm.")
    amp: bool = option(False, "bf16 autocast (fp16 on CUDA with --amp-dtype fp16).", decls=("--amp/--no-amp",))
    # fp16 (with a GradScaler) only on CUDA; the CPU autocasts to bf16
    amp_dtype: str = option("bf16", "bf16 | fp16")
    channels_last: str = option("auto", "auto | on | off")
    augment: str = option("light", "none | light | framing | strong | cmaen | miniaffectgpt | affectfusion")
    augment_group: int = 8
    early_stop: int | None = option(None, "Stop after N epochs without a better val metric.")
    select_metric: str = option("uar", "uar | acc | f1: picks the best checkpoint on val.")
    seed: int = option(0)
    out: str = option("runs/train", "Run directory (checkpoints, log.jsonl, log.csv).", path=True)
    resume: bool = option(False, "Continue the run in --out exactly where it stopped.", decls=("--resume",))
    device: str = option("auto", "auto | cpu | cuda[:N]")
    workers: int = option(2, "Threads that decode the manifest images.")
    # torch intra-op threads; None keeps torch's default (all cores)
    threads: int | None = option(None, "Torch CPU threads (1 is faster on a busy, shared CPU).")
    max_steps: int | None = option(None, "At most this many steps per epoch (smoke tests).")
    frames: int | None = option(None, "Frames per clip for video models.")  # None: the model's default
    tensorboard: bool = option(False, decls=("--tensorboard/--no-tensorboard",))
    # knowledge distillation (Hinton et al. 2015): a trained checkpoint whose softened outputs
    # the student also learns from; loss = (1 - alpha) * hard loss + alpha * T^2 * KL
    # several teachers make an ensemble teacher: the soft targets come from the mean of their
    # logits (ensemble distillation, Hinton et al. 2015 sec. 3); a single path is one teacher
    teacher: tuple[str, ...] = option(help="Distil from this trained checkpoint (run dir or .safetensors); "
                                           "repeat for an ensemble teacher (mean of their logits).",
                                      path=True, default_factory=tuple)
    # start from this trained checkpoint's weights (same model and config): fine-tuning, e.g. on
    # cleaner labels; recorded in the sidecar with its sha256
    init: str | None = option(None, "Start from this trained checkpoint's weights (fine-tuning; same "
                                    "model and options).", path=True)
    distill_alpha: float = option(0.5, "Weight of the teacher's soft targets (0..1).")
    distill_temperature: float = option(4.0, "Softmax temperature of the soft targets.")
    # schedule details the seeds set (all off by default: the plain schedules stay as they were)
    # floor of cosine / cosine-restarts (eta_min; CMAEN 1e-6, CLIP seed 1e-6)
    min_lr: float = option(0.0, "LR floor of cosine / cosine-restarts.")
    # first cycle, epochs (None: (epochs - warmup) // 3)
    restart_period: int | None = option(None, "cosine-restarts: first cycle, epochs.")
    # each cycle's cosine part is this times the previous one's
    restart_mult: float = option(1.0, "cosine-restarts: cycle length multiplier.")
    # each cycle's peak LR is this times the previous one's
    restart_decay: float = option(1.0, "cosine-restarts: peak LR factor per cycle.")
    # epochs of linear warm-up from the floor at the start of each cycle
    restart_warmup: int = option(0, "cosine-restarts: warm-up epochs per cycle.")
    plateau_patience: int = option(2, "plateau: epochs without gain before a cut.")
    plateau_factor: float = option(0.5, "plateau: LR factor of a cut.")
    # evaluation-time resize of the shorter side, then a centre crop to the model's input
    # (torchvision Resize(n) + CenterCrop(size)); carried in the checkpoint's preprocessing
    eval_resize: int | None = option(None, "Resize the shorter side to N, then centre-crop (kept in the "
                                           "checkpoint).")

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            v = str(getattr(self, name))
            if v not in allowed:
                raise ConfigError(f"--{name.replace('_', '-')} {v!r} is not one of {', '.join(allowed)}")
        object.__setattr__(self, "preset", str(self.preset))
        # a recipe, config file or earlier sidecar may name one teacher as a plain string
        teachers = self.teacher if isinstance(self.teacher, (list, tuple)) else (self.teacher,)
        object.__setattr__(self, "teacher", tuple(str(t) for t in teachers if t is not None))
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

    Raises ConfigError for an unknown recipe, a missing manifest/model, unknown keys (in the
    recipe or the file), or a model with a loss of its own (cmaen) left on the default loss: pass
    --loss cmaen, or another --loss on purpose."""
    data: dict[str, Any] = {}
    if recipe:
        from train.recipes import RecipeError, load_recipe

        try:
            r = load_recipe(recipe)
        except RecipeError as e:
            raise ConfigError(f"--recipe {e}") from None
        known = {f.name for f in dataclasses.fields(TrainConfig)} - {"recipe", "recipe_sha256"}
        unknown = sorted(set(r.values) - known)
        if unknown:
            raise ConfigError(f"recipe {r.name}: unknown key(s) {unknown}")
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
