"""`vgg`: the compact VGG-style CNN for 48x48 grey faces, trained from scratch.

Shape of Khaireddin & Chen 2021 ("Facial Emotion Recognition: State of the Art Performance on
FER2013", 73.28 % single-model test accuracy): four stages of two 3x3 conv + BatchNorm + ReLU,
64-128-256-512 channels, a 2x2 max-pool after each stage, then FC 4096 -> 4096 -> classes with
dropout. They fed 40 px crops (a 2x2 grid after the pools); at our 48 px input the grid is 3x3.
`width` scales every conv stage and `fc_dim` the hidden FC layers, so a CPU run can use a
narrower net (width 0.5 with fc_dim 1024 has ~10x fewer FC weights).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from train.models.base import FERModel, ModelConfig
from train.models.registry import register_model


@dataclass(frozen=True)
class VGGConfig(ModelConfig):
    width: float = 1.0
    stages: tuple[int, ...] = (64, 128, 256, 512)
    convs_per_stage: int = 2
    fc_dim: int = 4096
    dropout: float = 0.2

    def __post_init__(self):
        super().__post_init__()
        if self.width <= 0:
            raise ValueError(f"width must be > 0, got {self.width}")
        if self.input_size // 2 ** len(self.stages) < 1:
            raise ValueError(f"input_size {self.input_size} is too small for {len(self.stages)} "
                             f"pooling stages; use >= {2 ** len(self.stages)} px")


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class VGG(FERModel):
    def __init__(self, cfg: VGGConfig):
        super().__init__()
        stages, cin = [], cfg.in_chans
        for c in cfg.stages:
            cout = max(8, round(c * cfg.width))
            layers = []
            for _ in range(cfg.convs_per_stage):
                layers += _conv_bn_relu(cin, cout)
                cin = cout
            stages.append(nn.Sequential(*layers))
        self.stages = nn.ModuleList(stages)
        self.pool = nn.MaxPool2d(2)
        grid = cfg.input_size // 2 ** len(cfg.stages)
        self.fc = nn.Sequential(
            nn.Flatten(),
            nn.Linear(cin * grid * grid, cfg.fc_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
            nn.Linear(cfg.fc_dim, cfg.fc_dim), nn.ReLU(inplace=True), nn.Dropout(cfg.dropout),
        )
        self.head = nn.Linear(cfg.fc_dim, cfg.num_classes)
        self.num_features = cfg.fc_dim

    def conv_features(self, x):
        for stage in self.stages:
            x = self.pool(stage(x))
        return x

    def forward_features(self, x, text=None, text_mask=None):
        return self.fc(self.conv_features(x))

    def forward_head(self, feats):
        return self.head(feats)

    def cam_layer(self) -> nn.Module:
        return self.stages[-1]


@register_model("vgg", VGGConfig)
def vgg(cfg: VGGConfig) -> VGG:
    return VGG(cfg)
