"""Preprocessing a checkpoint carries, and batch augmentation for training.

`Preprocess` is the one place that turns decoded uint8 images (any size, grey or RGB) into the
model's input: training decodes the manifest through it, and `train predict` runs the same
spec (read back from a checkpoint sidecar) on new face crops, so train and predict agree.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GREY_MEAN = (0.5,)
GREY_STD = (0.5,)
RESIZE_MODES = ("bilinear", "bicubic", "nearest", "area")


class PreprocessError(ValueError):
    """A sidecar whose preprocessing spec is missing a field or holds a bad value."""


@dataclass(frozen=True)
class Preprocess:
    size: tuple[int, int]  # (height, width)
    channels: int  # 1 or 3
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: str = "bilinear"
    # when set: resize the shorter side to this many pixels (aspect kept), then centre-crop
    # `size` (torchvision Resize(n) + CenterCrop(size); the AffectFusion seed's evaluation)
    resize_short: int | None = None

    def __post_init__(self):
        size = (self.size, self.size) if isinstance(self.size, int) else tuple(int(s) for s in self.size)
        object.__setattr__(self, "size", size)
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        if self.channels not in (1, 3):
            raise ValueError(f"Preprocess: channels must be 1 or 3, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"Preprocess: mean/std need {self.channels} values each, got "
                             f"{self.mean} / {self.std}")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"Preprocess: resize {self.resize!r} unknown; use one of {RESIZE_MODES}")
        if self.resize_short is not None and self.resize_short < max(self.size):
            raise ValueError(f"Preprocess: resize_short {self.resize_short} is smaller than the crop "
                             f"{self.size}")

    @staticmethod
    def default_for(size, channels: int) -> "Preprocess":
        """ImageNet statistics for RGB input (what pretrained backbones expect); 0.5/0.5 for grey."""
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GREY_MEAN, GREY_STD)
        return Preprocess(size, channels, mean, std)

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["resize_short"] is None:  # older sidecars have no such key: keep them comparable
            del d["resize_short"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @staticmethod
    def from_dict(d: dict) -> "Preprocess":
        """A checkpoint sidecar's "preprocess" dict; PreprocessError names a missing or bad field."""
        try:
            return Preprocess(tuple(d["size"]), int(d["channels"]), tuple(d["mean"]), tuple(d["std"]),
                              d.get("resize", "bilinear"), d.get("resize_short"))
        except KeyError as e:
            raise PreprocessError(f"checkpoint sidecar: preprocess.{e.args[0]} is missing; use the .json "
                                  "that `train run` wrote beside the weights") from None
        except (TypeError, ValueError) as e:
            raise PreprocessError(f"checkpoint sidecar: preprocess is not usable ({e}); use the .json "
                                  "that `train run` wrote beside the weights") from None

    def to_uint8(self, images: Sequence[np.ndarray]):
        """Decoded images -> uint8 tensor (N, C, H, W) at this spec's size and channels."""
        import torch

        out = torch.empty((len(images), self.channels, *self.size), dtype=torch.uint8)
        for i, img in enumerate(images):
            out[i] = self._one(img)
        return out

    def normalize(self, x):
        """uint8 (or 0..255 float) batch (..., C, H, W) -> normalised float32."""
        import torch

        x = x.float().div_(255.0)
        shape = (self.channels, 1, 1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std

    def apply(self, images: Sequence[np.ndarray]):
        """New images (list of HxW or HxWx3 uint8, any size) -> model-ready float tensor (N,C,H,W)."""
        if not len(images):
            raise ValueError("Preprocess.apply: no images given")
        return self.normalize(self.to_uint8(images))

    def _one(self, img: np.ndarray):
        import torch
        import torch.nn.functional as F

        from features.images import to_grey, to_rgb

        img = np.asarray(img)
        if img.dtype != np.uint8:
            raise ValueError(f"Preprocess: images must be uint8 arrays, got {img.dtype}")
        if img.ndim == 3 and img.shape[2] == 4:
            img = img[..., :3]  # RGBA: the alpha channel carries no expression
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if img.ndim not in (2, 3):
            raise ValueError(f"Preprocess: expected HxW or HxWx3 image, got shape {img.shape}")
        img = to_grey(img) if self.channels == 1 else to_rgb(img)
        t = torch.from_numpy(np.array(img, copy=True))  # PIL arrays are read-only
        t = t[None] if t.ndim == 2 else t.permute(2, 0, 1)
        if self.resize_short is not None:
            return self._short_side_crop(t)
        if tuple(t.shape[1:]) == self.size:
            return t
        mode = self.resize
        # antialias only exists for the smooth modes; it matters when shrinking large face crops
        kw = {"align_corners": False, "antialias": True} if mode in ("bilinear", "bicubic") else {}
        y = F.interpolate(t[None].float(), size=self.size, mode=mode, **kw)[0]
        return y.round_().clamp_(0, 255).to(torch.uint8)

    def _short_side_crop(self, t):
        """uint8 (C,H,W) -> shorter side resize_short, then the centre `size` (torchvision's own
        v2 Resize + CenterCrop, so the result matches the seed's transforms.Resize/CenterCrop)."""
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as TF

        mode = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC,
                "nearest": InterpolationMode.NEAREST, "area": InterpolationMode.BILINEAR}[self.resize]
        t = TF.resize(t, [self.resize_short], interpolation=mode, antialias=True)
        return TF.center_crop(t, list(self.size))


AUGMENT_LEVELS = ("none", "light", "framing", "strong", "cmaen", "miniaffectgpt", "affectfusion")


def build_augment(level: str, size: tuple[int, int], group: int = 8):
    """A callable uint8 batch (B, C, H, W) -> augmented uint8 batch, or None for 'none'.

    Levels: `light` / `framing` / `strong` are this project's (`framing`: the side 0.88-1.12x the
    face's and its centre up to a fifth of it off, as a detector's box frames a face); `cmaen`,
    `miniaffectgpt` and `affectfusion` are the seeds' own training transforms as torchvision v2
    lists (sources: the recipes in train/recipes/ and the comments below). Every level flips
    horizontally with p 0.5.

    torchvision.transforms.v2 on a batch tensor draws ONE set of random parameters per call
    (the whole batch gets the same crop/rotation). To keep most of the per-sample diversity
    at a fraction of the cost of a per-image loop, the batch is cut into groups of `group`
    samples, each with its own draw; horizontal flips are drawn per sample (a mask, cheap).
    So: flips are per-sample random, crop/rotation/erasing are per-group random.
    Raises ValueError for an unknown level.
    """
    if level == "none":
        return None
    if level not in AUGMENT_LEVELS:
        raise ValueError(f"augment {level!r} unknown; use one of {', '.join(AUGMENT_LEVELS)}")
    from torchvision.transforms import v2

    erase = None
    if level == "light":
        ops = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), ratio=(0.9, 1.1), antialias=True),
               v2.RandomRotation(10)]
    elif level == "framing":
        # a face detector's framing: the face a little larger or smaller and off centre. The border
        # is repeated first (as crop_face repeats it), so zooming out shows no black frame
        pad = max(1, round(0.125 * min(size)))
        ops = [v2.Pad(pad, padding_mode="edge"), v2.RandomRotation(10),
               v2.RandomResizedCrop(size, scale=(0.49, 0.81), ratio=(0.9, 1.1), antialias=True)]
    elif level == "strong":
        ops = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), ratio=(0.8, 1.25), antialias=True),
               v2.RandomRotation(20),
               v2.ColorJitter(brightness=0.3, contrast=0.3)]
        erase = v2.RandomErasing(p=0.5, scale=(0.02, 0.15), value=0)
    elif level == "cmaen":
        # CMAEN dataset.py:100-107 (erasing before Normalize, so black: value 0). On grey input
        # saturation and hue leave the image as it is, as the seed's grey branch has no jitter.
        ops = [v2.RandomRotation(15),
               v2.RandomAffine(degrees=0, translate=(0.1, 0.1), scale=(0.9, 1.1)),
               v2.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.2, hue=0.1)]
        erase = v2.RandomErasing(p=0.1, scale=(0.02, 0.15), ratio=(0.3, 3.3), value=0)
    elif level == "miniaffectgpt":
        # MiniAffectGPT train_attention.py:18-25
        ops = [v2.RandomRotation(10), v2.ColorJitter(brightness=0.2, contrast=0.2)]
    else:
        # AffectFusion train_only_dfew_16f.py:269-273 (torchvision's default ratio 3/4..4/3)
        ops = [v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True)]
    geo = v2.Compose(ops)
    return _GroupAugment(geo, erase, max(1, int(group)))


class _GroupAugment:
    def __init__(self, geo, erase, group: int):
        self.geo, self.erase, self.group = geo, erase, group

    def __call__(self, x):
        import torch

        # per-sample horizontal flip: a mask draw is enough and keeps the batch vectorised
        flip = torch.rand(x.shape[0]) < 0.5
        x = torch.where(flip.view(-1, *([1] * (x.dim() - 1))).to(x.device), x.flip(-1), x)
        parts = []
        for chunk in x.split(self.group):
            chunk = self.geo(chunk)
            if self.erase is not None:
                chunk = self.erase(chunk)
            parts.append(chunk)
        return torch.cat(parts)
