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
    "augment": ("none", "light", "strong"),
    "select_metric": ("uar", "acc", "f1"),
    "device": ("auto", "cpu", "cuda"),
    "preset": ("7", "5", "4", "2"),
    "amp_dtype": ("bf16", "fp16"),
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
    # knowledge distillation (Hinton et al. 2015): a trained checkpoint whose softened outputs
    # the student also learns from; loss = (1 - alpha) * hard loss + alpha * T^2 * KL
    teacher: str | None = None
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
        if not 0 <= self.distill_alpha <= 1:
            raise ConfigError(f"--distill-alpha must be in [0, 1], got {self.distill_alpha}")
        if self.distill_temperature <= 0:
            raise ConfigError(f"--distill-temperature must be > 0, got {self.distill_temperature}")

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


def make_config(config_file: str | Path | None = None, **flags: Any) -> TrainConfig:
    """File values, then every flag that is not None on top (unset flags keep file/defaults)."""
    data = read_config_file(config_file) if config_file else {}
    data.update({k: v for k, v in flags.items() if v is not None})
    for req in ("manifest", "model"):
        if not data.get(req):
            raise ConfigError(f"--{req} is required (as a flag or in the --config file)")
    return TrainConfig(**data)
