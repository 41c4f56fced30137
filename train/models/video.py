"""Clip models for DFEW (16-frame clips, input (B,T,C,H,W)): `dfew-2d` and `r3d18`.

`dfew-2d` follows the AffectFusion seed (train_only_dfew_16f.py): a 2D ImageNet ResNet per
frame; in training one random frame per clip (a new draw every epoch), at evaluation every
frame with the per-frame logits averaged per clip. The head is linear, so averaging the frame
features before it gives exactly the average of the frame logits; forward_features returns that
mean and forward_head stays the same linear layer in both modes.
The random frame comes from `model.generator` (a torch.Generator on the CPU) when set, else
from torch's global RNG, which the trainer's seed covers.

Changed from the seed: its "all frames" evaluation draws 16 frames *at random with
replacement* (DFEWFrames.__getitem__ ignores the index within a clip), so some frames count
twice and others never; here every frame counts once, deterministically.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.models.base import FERModel, ModelConfig
from train.models.registry import register_model
from train.models.resnet import ResNetTrunk


@dataclass(frozen=True)
class DFEW2DConfig(ModelConfig):
    in_chans: int = 3
    input_size: int = 224
    frames: int = 16
    backbone: str = "resnet50"      # the seed's; resnet18 / resnet101 also work
    pretrained: str | None = None   # torchvision ImageNet file (see resnet.py); never fetched
    drop_rate: float = 0.0

    def __post_init__(self):
        super().__post_init__()
        if self.backbone not in ("resnet18", "resnet50", "resnet101"):
            raise ValueError(f"backbone must be resnet18, resnet50 or resnet101, got {self.backbone!r}")


@dataclass(frozen=True)
class R3D18Config(ModelConfig):
    in_chans: int = 3
    input_size: int = 112
    frames: int = 16


class DFEW2D(FERModel):
    input_kind = "clip"

    def __init__(self, cfg: DFEW2DConfig):
        super().__init__()
        depth = int(cfg.backbone.removeprefix("resnet"))
        self.trunk = ResNetTrunk(depth, cfg.in_chans, stem48=False, pretrained=cfg.pretrained)
        self.drop = nn.Dropout(cfg.drop_rate)
        self.head = nn.Linear(self.trunk.num_features, cfg.num_classes)
        self.num_features = self.trunk.num_features
        self.generator: torch.Generator | None = None

    def pick_frames(self, b: int, t: int) -> torch.Tensor:
        return torch.randint(t, (b,), generator=self.generator)

    def forward_features(self, x, text=None, text_mask=None):
        b, t = x.shape[:2]
        if self.training:
            idx = self.pick_frames(b, t).to(x.device)
            return self.trunk(x[torch.arange(b, device=x.device), idx])
        return self.trunk(x.flatten(0, 1)).unflatten(0, (b, t)).mean(dim=1)

    def forward_head(self, feats):
        return self.head(self.drop(feats))

    def cam_layer(self) -> nn.Module:
        return self.trunk.layer4


class R3D18(FERModel):
    input_kind = "clip"

    def __init__(self, cfg: R3D18Config):
        super().__init__()
        from torchvision.models.video import r3d_18

        net = r3d_18(weights=None)
        if cfg.in_chans != 3:
            old = net.stem[0]
            net.stem[0] = nn.Conv3d(cfg.in_chans, old.out_channels, old.kernel_size, old.stride,
                                    old.padding, bias=False)
        self.num_features = net.fc.in_features
        self.head = nn.Linear(self.num_features, cfg.num_classes)
        net.fc = nn.Identity()
        self.net = net

    def forward_features(self, x, text=None, text_mask=None):
        return self.net(x.transpose(1, 2))   # (B,T,C,H,W) -> (B,C,T,H,W), torchvision's layout

    def forward_head(self, feats):
        return self.head(feats)

    def cam_layer(self) -> nn.Module:
        return self.net.layer4


@register_model("dfew-2d", DFEW2DConfig)
def dfew_2d(cfg: DFEW2DConfig) -> DFEW2D:
    return DFEW2D(cfg)


@register_model("r3d18", R3D18Config)
def r3d18(cfg: R3D18Config) -> R3D18:
    return R3D18(cfg)
