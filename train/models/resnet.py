"""ResNets from torchvision: `resnet18`/`resnet50`/`resnet101` and `raf-compound`.

ImageNet weights are optional and only ever read from disk (a file, a folder holding
torchvision's file name, or `imagenet` for torch's own hub cache); nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from train.models.base import FERModel, ModelConfig
from train.models.registry import register_model

# torchvision's IMAGENET1K_V1 file names, so a copy of torch's hub cache works as-is.
WEIGHT_FILES = {18: "resnet18-f37072fd.pth", 50: "resnet50-0676ba61.pth",
                101: "resnet101-63fe2227.pth"}
# IMAGENET1K_V2 (torchvision's newer recipe; the AffectFusion seed's ResNet-50, 7265ab6:212):
# a folder holding only the V2 file is read as well
WEIGHT_FILES_V2 = {50: "resnet50-11ad3fa6.pth", 101: "resnet101-cd907fc2.pth"}


def _file_name(folder: Path, depth: int) -> str:
    """The V1 name, unless `folder` holds only the V2 file."""
    v2 = WEIGHT_FILES_V2.get(depth)
    if v2 and not (folder / WEIGHT_FILES[depth]).is_file() and (folder / v2).is_file():
        return v2
    return WEIGHT_FILES[depth]


@dataclass(frozen=True)
class ResNetConfig(ModelConfig):
    depth: ClassVar[int] = 18
    # 48 px faces lose most of their pixels to the 7x7/2 stem + max-pool (48 -> 12 before
    # layer1); a 3x3/1 stem without max-pool keeps layer1 at 48x48 (the CIFAR-style stem).
    stem48: bool = True
    pretrained: str | None = None   # path, folder, or "imagenet" (torch hub cache); never fetched
    drop_rate: float = 0.0


@dataclass(frozen=True)
class ResNet18Config(ResNetConfig):
    depth: ClassVar[int] = 18


@dataclass(frozen=True)
class ResNet50Config(ResNetConfig):
    depth: ClassVar[int] = 50
    in_chans: int = 3
    input_size: int = 224
    stem48: bool = False


@dataclass(frozen=True)
class ResNet101Config(ResNetConfig):
    depth: ClassVar[int] = 101
    in_chans: int = 3
    input_size: int = 224
    stem48: bool = False


@dataclass(frozen=True)
class RafCompoundConfig(ResNetConfig):
    """RAF-DB compound: 11 classes (features.labels 'rafdb-compound'); aligned 100 px RGB faces."""
    depth: ClassVar[int] = 18
    num_classes: int = 11
    in_chans: int = 3
    input_size: int = 100
    stem48: bool = False


def torch_hub_checkpoints() -> Path:
    home = os.environ.get("TORCH_HOME") or Path.home() / ".cache" / "torch"
    return Path(home) / "hub" / "checkpoints"


def _weights_path(spec: str, depth: int) -> Path:
    from features.hub import WeightsNotFound, resolve

    fname = _file_name(torch_hub_checkpoints() if spec == "imagenet" else Path(spec).expanduser(), depth)
    if spec == "imagenet":
        p = torch_hub_checkpoints() / fname
        if not p.is_file():
            raise WeightsNotFound(
                f"resnet{depth} pretrained=imagenet: {fname} is not at {p}; copy torchvision's ImageNet "
                f"file {fname} there (torchvision downloads it to that folder on a machine with "
                "network), or pass pretrained=PATH (`pipeline weights` lists it)")
        return p
    p = resolve(spec, f"resnet{depth} ImageNet weights", files=(fname,))
    return p / fname if p.is_dir() else p


def load_imagenet_weights(net: nn.Module, spec: str, depth: int, in_chans: int, stem48: bool) -> None:
    """Load torchvision's ImageNet weights without unpickling code (weights_only=True)."""
    from features.weights import load_state_dict

    path = _weights_path(spec, depth)
    state = load_state_dict(path, f"resnet{depth} ImageNet weights", f"torchvision's {WEIGHT_FILES[depth]}")
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    if stem48:
        # a 3x3/1 stem cannot reuse the 7x7/2 kernel; it trains from scratch, the rest is kept.
        state.pop("conv1.weight", None)
    elif in_chans == 1:
        # grey input: the sum over RGB kernels responds to a grey image as the RGB stem did
        # to its 3-channel copy (timm's adapt_input_conv does the same).
        state["conv1.weight"] = state["conv1.weight"].sum(dim=1, keepdim=True)
    missing, unexpected = net.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith(("fc.", "conv1."))]
    if bad or unexpected:
        from features.weights import WeightsError

        raise WeightsError(f"{path} does not look like torchvision resnet{depth} weights: "
                         f"missing {bad[:5]}, unexpected {list(unexpected)[:5]}")


class ResNetTrunk(nn.Module):
    """A torchvision ResNet without its classifier: image (B,C,H,W) -> pooled (B, F)."""

    def __init__(self, depth: int, in_chans: int, stem48: bool, pretrained: str | None = None):
        super().__init__()
        from torchvision.models import resnet18, resnet50, resnet101

        net = {18: resnet18, 50: resnet50, 101: resnet101}[depth](weights=None)
        if stem48:
            net.conv1 = nn.Conv2d(in_chans, 64, 3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        elif in_chans != 3:
            net.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        if pretrained:
            load_imagenet_weights(net, pretrained, depth, in_chans, stem48)
        self.num_features = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    @property
    def layer4(self) -> nn.Module:
        return self.net.layer4

    def forward(self, x):
        return self.net(x)


class ResNet(FERModel):
    def __init__(self, cfg: ResNetConfig):
        super().__init__()
        self.trunk = ResNetTrunk(cfg.depth, cfg.in_chans, cfg.stem48, cfg.pretrained)
        self.num_features = self.trunk.num_features
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.num_features, cfg.num_classes)

    def forward_features(self, x, text=None, text_mask=None):
        return self.trunk(x)

    def forward_head(self, feats):
        return self.head(self.drop(feats))

    def cam_layer(self) -> nn.Module:
        return self.trunk.layer4


@register_model("resnet18", ResNet18Config)
def resnet18(cfg: ResNet18Config) -> ResNet:
    return ResNet(cfg)


@register_model("resnet50", ResNet50Config)
def resnet50(cfg: ResNet50Config) -> ResNet:
    return ResNet(cfg)


@register_model("resnet101", ResNet101Config)
def resnet101(cfg: ResNet101Config) -> ResNet:
    return ResNet(cfg)


@register_model("raf-compound", RafCompoundConfig)
def raf_compound(cfg: RafCompoundConfig) -> ResNet:
    return ResNet(cfg)
