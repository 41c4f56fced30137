"""NetworkV2 of the `facial-emotion-recognition` 0.3.4 package, written here from its architecture.

The package builds `NetworkV2(in_c=1, nl=32, out_f=7)` (its `networks.py`): four
[ReflectionPad 1 -> Conv3x3 (bias) -> BN -> ReLU] stages, widths nl, 2nl, 4nl, 8nl, the last three
at stride 2 (48 -> 48 -> 24 -> 12 -> 6), then Linear(8nl*6*6, 256) -> ReLU -> Linear(256, 7) ->
Sigmoid. Module names match the package's state-dict keys (conv_1.1.weight, linear.0.weight, ...),
so `model/model.pkl`'s `network` entry loads with strict=True.

Installing the package is not an option here: it pulls facenet-pytorch and opencv-python, and its
own loader calls `torch.load` without `map_location`, which fails on a CPU-only machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

# the package's `emotions` dict, in index order, lower-cased
LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


@dataclass(frozen=True)
class NetworkV2Config:
    in_c: int = 1
    nl: int = 32
    out_f: int = 7
    input_size: int = 48
    hidden: int = 256


def _stage(cin: int, cout: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ReflectionPad2d(1),
        nn.Conv2d(cin, cout, 3, stride=stride),
        nn.BatchNorm2d(cout),
        nn.ReLU(),
    )


class NetworkV2(nn.Module):
    """Returns the package's outputs: per-class sigmoid scores (argmax = the predicted class)."""

    def __init__(self, cfg: NetworkV2Config = NetworkV2Config()):
        super().__init__()
        self.cfg = cfg
        nl = cfg.nl
        self.conv_1 = _stage(cfg.in_c, nl, 1)
        self.conv_2 = _stage(nl, 2 * nl, 2)
        self.conv_3 = _stage(2 * nl, 4 * nl, 2)
        self.conv_4 = _stage(4 * nl, 8 * nl, 2)
        side = cfg.input_size
        for _ in range(3):  # reflection pad 1 + 3x3 at stride 2: ceil(side / 2)
            side = (side + 2 - 3) // 2 + 1
        self.linear = nn.Sequential(
            nn.Linear(8 * nl * side * side, cfg.hidden),
            nn.ReLU(),
            nn.Linear(cfg.hidden, cfg.out_f),
            nn.Sigmoid(),
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_4(self.conv_3(self.conv_2(self.conv_1(x))))

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def fuse_bn(self) -> "NetworkV2":
        """Fold each BatchNorm into its conv (eval only); outputs equal up to float rounding."""
        from torch.nn.utils.fusion import fuse_conv_bn_eval

        if self.training:
            raise RuntimeError("fuse_bn() is for inference: call .eval() first")
        for stage in (self.conv_1, self.conv_2, self.conv_3, self.conv_4):
            stage[1] = fuse_conv_bn_eval(stage[1], stage[2])
            stage[2] = nn.Identity()
        return self


def load_pkl(path: str | Path, cfg: NetworkV2Config = NetworkV2Config()) -> NetworkV2:
    """Load the package's model.pkl (a dict of tensors: network, optimizer, epochs, accuracy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no NetworkV2 checkpoint at {path}")
    # weights_only: the file is plain tensors and numbers, so nothing is unpickled as code
    blob = torch.load(path, map_location="cpu", weights_only=True)
    state = blob.get("network") if isinstance(blob, dict) else None
    if state is None:
        raise ValueError(f"{path}: expected a dict with a 'network' state dict (the package's "
                         f"model.pkl); found {type(blob).__name__} with keys "
                         f"{sorted(blob) if isinstance(blob, dict) else '-'}")
    model = NetworkV2(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()


def preprocess(grey: list[np.ndarray] | np.ndarray, size: int = 48) -> torch.Tensor:
    """The package's transform: ToPILImage -> Resize((48, 48)) -> ToTensor -> Normalize(0.5, 0.5).

    On 48x48 FER2013 faces the resize is the identity; other sizes go through PIL's bilinear,
    as torchvision's Resize on a PIL image does.
    """
    from PIL import Image

    out = np.empty((len(grey), 1, size, size), dtype=np.float32)
    for i, g in enumerate(grey):
        if g.ndim == 3:
            g = np.asarray(Image.fromarray(g).convert("L"))
        if g.shape != (size, size):
            g = np.asarray(Image.fromarray(g).resize((size, size), Image.BILINEAR))
        out[i, 0] = g
    return torch.from_numpy((out / 255.0 - 0.5) / 0.5)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
