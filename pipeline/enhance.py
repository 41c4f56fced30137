"""The enhance stage: x4 super-resolution (bicubic or SwinIR) and colorization (gray2rgb or DDColor).

Official checkpoints are loaded by their state dict through spandrel (SwinIR) and
spandrel_extra_arches (DDColor), which detect the architecture and its hyper-parameters from the
keys and shapes. We do not use basicsr, the library the checkpoints were trained with: basicsr
1.4.2 fails at import with torchvision 0.29 (`from torchvision.transforms.functional_tensor import
rgb_to_grayscale` -> `ModuleNotFoundError: No module named 'torchvision.transforms.functional_tensor'`,
measured; see docs/enhance.md). The file is read with `torch.load(weights_only=True)` (or
safetensors), never unpickled as code.

Order: super-resolution first, then colorization, because DDColor predicts the colour channels at
its own 256x256 input size and keeps the image's own lightness, so it gains from the sharper L.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from features.device import autocast
from features.hub import WeightsNotFound
from features.manifest import file_sha256
from pipeline.stage import StageError, decode_batch, replace_images, set_columns

SR_OFFICIAL = {
    "real_sr x4 large": "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
    "classical x4": "001_classicalSR_DF2K_s64w8_SwinIR-M_x4.pth",
    "lightweight x4": "002_lightweightSR_DIV2K_s64w8_SwinIR-S_x4.pth",
}
COLOR_OFFICIAL = {
    "paper tiny": "ddcolor_paper_tiny.pth",
    "paper large": "ddcolor_paper.pth",
    "modelscope large": "ddcolor_modelscope.pth",
    "artistic large": "ddcolor_artistic.pth",
}
SR_KINDS = ("none", "bicubic", "swinir")
COLOR_KINDS = ("none", "gray2rgb", "ddcolor")
EXPECTED_ARCH = {"swinir": "SwinIR", "ddcolor": "DDColor"}


def parse_op(spec: str, kinds: tuple[str, ...], flag: str) -> tuple[str, Path | None]:
    """'swinir:/path/x.pth' -> ('swinir', Path); 'bicubic' -> ('bicubic', None)."""
    kind, _, path = spec.partition(":")
    if kind not in kinds:
        raise StageError(f"{flag} {spec!r}: expected one of {', '.join(kinds)} (model kinds as kind:CHECKPOINT)")
    needs = kind in EXPECTED_ARCH
    if needs and not path:
        raise StageError(f"{flag} {kind} needs a checkpoint: {flag} {kind}:/path/to/checkpoint.pth")
    if not needs and path:
        raise StageError(f"{flag} {kind} takes no checkpoint (got {path!r})")
    return kind, Path(path).expanduser() if path else None


def find_checkpoint(path: Path, kind: str) -> Path:
    """The checkpoint file, or an error naming the official files and where to put them."""
    for p in (path, Path("weights") / path.name):
        if p.is_file():
            return p
    official = SR_OFFICIAL if kind == "swinir" else COLOR_OFFICIAL
    names = "; ".join(f"{k}: {v}" for k, v in official.items())
    raise WeightsNotFound(
        f"{kind}: no checkpoint at {path}. affectlab never downloads weights. Get the official file from the "
        f"{'SwinIR (JingyunLiang/SwinIR)' if kind == 'swinir' else 'DDColor (piddnad/DDColor)'} release page on a "
        f"machine with network ({names}), put it at {path} (or in ./weights/), and pass its path; "
        "`pipeline weights` lists every file and where it goes (make enhance SR=bicubic COLOR=gray2rgb needs none).")


_INSTALLED = False


def load_model(path: Path, kind: str, device: str = "cpu"):
    """A spandrel ImageModelDescriptor for a SwinIR / DDColor checkpoint, in eval mode."""
    global _INSTALLED
    import spandrel
    import torch

    if not _INSTALLED:
        import spandrel_extra_arches

        try:
            spandrel_extra_arches.install()
        except ValueError:  # already installed into spandrel's registry by someone else
            pass
        _INSTALLED = True
    from features.weights import WeightsError, load_state_dict

    try:  # safetensors or plain tensors only; a truncated, foreign or pickled file is one line
        state = load_state_dict(path, f"{kind} checkpoint", f"an official {EXPECTED_ARCH[kind]} .pth")
    except WeightsError as e:
        raise StageError(str(e)) from None
    try:
        desc = spandrel.ModelLoader(torch.device("cpu")).load_from_state_dict(spandrel.canonicalize_state_dict(state))
    except Exception as e:  # noqa: BLE001 - spandrel raises several types for unknown layouts
        raise StageError(f"{path}: spandrel cannot read it as a {EXPECTED_ARCH[kind]} checkpoint "
                         f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if desc.architecture.id != EXPECTED_ARCH[kind]:
        raise StageError(f"{path} is a {desc.architecture.id} checkpoint, not {EXPECTED_ARCH[kind]}")
    return desc.to(torch.device(device)).eval()


# --------------------------------------------------------------------------- tensor ops


def _ramp(n: int, r: int):
    import torch

    w = torch.ones(n)
    r = min(r, n // 2)
    if r > 0:
        up = torch.arange(1, r + 1, dtype=torch.float32) / (r + 1)
        w[:r], w[n - r:] = up, up.flip(0)
    return w


def tiled(fn, x, scale: int, tile: int, overlap: int = 16):
    """fn over overlapping tiles of x (B,C,H,W), blended with linear ramps; fn(x) when x fits one tile.

    Hand-written because spandrel leaves tiling to its callers (chaiNNer does its own); SwinIR's
    attention memory grows with the image, so large inputs must go through in pieces.
    """
    import torch

    b, c, h, w = x.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return fn(x)
    if overlap >= tile:
        raise StageError(f"tile overlap {overlap} must be smaller than the tile ({tile})")
    stride = tile - overlap
    ys = sorted({min(y, max(h - tile, 0)) for y in range(0, h, stride)})
    xs = sorted({min(v, max(w - tile, 0)) for v in range(0, w, stride)})
    out = weight = None
    for y0 in ys:
        for x0 in xs:
            piece = fn(x[:, :, y0:y0 + tile, x0:x0 + tile]).float()
            ph, pw = piece.shape[-2:]
            if out is None:
                out = torch.zeros(b, piece.shape[1], h * scale, w * scale)
                weight = torch.zeros(1, 1, h * scale, w * scale)
            wt = (_ramp(ph, overlap * scale // 2)[:, None] * _ramp(pw, overlap * scale // 2)[None, :])[None, None]
            out[:, :, y0 * scale:y0 * scale + ph, x0 * scale:x0 * scale + pw] += piece.cpu() * wt
            weight[:, :, y0 * scale:y0 * scale + ph, x0 * scale:x0 * scale + pw] += wt
    return (out / weight).to(x.device)


def bicubic(x, scale: int):
    import torch.nn.functional as F

    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def ddcolor_batch(model, grey):
    """DDColor on a batch (B,1,H,W) in [0,1] -> (B,3,H,W) RGB.

    spandrel's DDColor call accepts one image at a time; this is the same pipeline (DDColor's
    own inference recipe: lightness kept from the input, colour channels predicted at the model's
    input size and resized) written for a whole batch.
    """
    import importlib

    import torch
    import torch.nn.functional as F

    color = importlib.import_module("spandrel_extra_arches.architectures.DDColor.__color")
    net = model.model
    h, w = grey.shape[-2:]
    rgb_lin = color.rgb_to_linear_rgb(grey).repeat(1, 3, 1, 1)
    orig_l = color.linear_rgb_to_lab(rgb_lin)[:, :1]
    small = F.interpolate(rgb_lin, size=net.input_size, mode="bilinear")
    small_l = color.linear_rgb_to_lab(small)[:, :1]
    zeros = torch.zeros_like(small_l)
    ab = net(color.lab_to_rgb(torch.cat([small_l, zeros, zeros], 1)))
    ab = F.interpolate(ab.float(), size=(h, w), mode="bilinear")
    return color.lab_to_rgb(torch.cat([orig_l, ab], 1)).clamp(0, 1)


def is_grey(arr: np.ndarray) -> bool:
    """HxW, or HxWx3 with three equal channels (FER2013 saved as RGB)."""
    return arr.ndim == 2 or bool((arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all())


# --------------------------------------------------------------------------- the stage


@dataclass
class EnhanceStage:
    sr: str = "bicubic"
    color: str = "none"
    scale: int = 4
    tile: int = 256
    overlap: int = 16
    precision: str = "fp32"  # fp32 | bf16 | fp16 | auto (autocast)
    device: str = "cpu"
    name: str = "enhance"
    groups: tuple[str, ...] = ("enhance",)
    _sr: tuple = field(default=(), init=False, repr=False)
    _color: tuple = field(default=(), init=False, repr=False)
    _files: dict = field(default_factory=dict, init=False, repr=False)
    _models: dict = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self):
        self._sr = parse_op(self.sr, SR_KINDS, "--sr")
        self._color = parse_op(self.color, COLOR_KINDS, "--color")
        if self.scale not in (1, 2, 3, 4, 8):
            raise StageError(f"--scale {self.scale}: expected 1, 2, 3, 4 or 8")
        if self.precision not in ("fp32", "bf16", "fp16", "auto"):
            raise StageError(f"--precision {self.precision!r}: expected fp32, bf16, fp16 or auto")
        # resolve + hash checkpoints now: a missing file fails before any batch runs, and
        # settings() (asked once per batch for its key) does not re-hash a 100 MB file
        for role, (kind, path) in (("sr", self._sr), ("color", self._color)):
            if path is not None:
                p = find_checkpoint(path, kind)
                self._files[role] = {"file": p.name, "sha256": file_sha256(p, 16), "path": str(p)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_models"] = {}  # a Ray actor loads its own copy in setup()
        return state

    def settings(self) -> dict:
        s = {"sr": self._sr[0], "color": self._color[0], "scale": self.scale, "precision": self.precision}
        if self._sr[0] == "swinir":
            s |= {"tile": self.tile, "overlap": self.overlap}
        for role, f in self._files.items():
            s[f"{role}_checkpoint"] = {"file": f["file"], "sha256": f["sha256"]}
        return s

    def setup(self) -> None:
        # no global torch.set_grad_enabled(False) here: it leaks into the caller's process (it
        # broke every later backward pass in the test run); enhance_arrays runs in inference_mode
        for role, (kind, _) in (("sr", self._sr), ("color", self._color)):
            if role in self._files and role not in self._models:
                self._models[role] = load_model(Path(self._files[role]["path"]), kind, self.device)
        sr = self._models.get("sr")
        if sr is not None and sr.scale != self.scale:
            raise StageError(f"the SwinIR checkpoint {self._files['sr']['file']} is x{sr.scale}; "
                             f"pass --scale {sr.scale}")

    # -- pieces

    def _super_resolve(self, x):
        kind = self._sr[0]
        if kind == "none" or self.scale == 1 and kind == "bicubic":
            return x
        if kind == "bicubic":
            return bicubic(x, self.scale)
        model = self._models["sr"]
        grey_in = x.shape[1] == 1
        inp = x.repeat(1, 3, 1, 1) if grey_in and model.input_channels == 3 else x
        with autocast(self.device, None if self.precision == "fp32" else self.precision):
            y = tiled(lambda t: model.model(t).float(), inp, self.scale, self.tile, self.overlap)
        y = y.clamp(0, 1)
        return y.mean(1, keepdim=True) if grey_in else y

    def _colorize(self, x, grey_rows: list[bool]):
        kind = self._color[0]
        if kind == "none" or not any(grey_rows):
            return x
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if kind == "gray2rgb":
            return x
        idx = [i for i, g in enumerate(grey_rows) if g]
        with autocast(self.device, None if self.precision == "fp32" else self.precision):
            coloured = ddcolor_batch(self._models["color"], x[idx, :1])
        x = x.clone()
        x[idx] = coloured.float()
        return x

    def enhance_arrays(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Same-shape uint8 images -> enhanced uint8 images (the stage's work, without the table)."""
        import torch

        grey_rows = [is_grey(a) for a in arrays]
        stack = np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])  # B,H,W,C
        if all(grey_rows) and stack.shape[-1] == 3:
            stack = stack[..., :1]  # RGB-encoded grey: one channel is enough until colorization
        x = torch.from_numpy(stack).permute(0, 3, 1, 2).float().div(255).to(self.device)
        orig_c = stack.shape[-1] if arrays[0].ndim == 3 else 1
        with torch.inference_mode():
            y = self._colorize(self._super_resolve(x), grey_rows)
        if y.shape[1] == 1 and orig_c == 3:
            y = y.repeat(1, 3, 1, 1)  # keep an RGB-encoded grey image RGB
        out = (y.float().clamp(0, 1).mul(255).round().byte().permute(0, 2, 3, 1).cpu().numpy())
        return [o[..., 0] if o.shape[-1] == 1 else o for o in out]

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]:
        from features.images import BadImage

        try:
            arrays = decode_batch(batch)
        except BadImage:  # one bad row must not sink the batch: decode one by one, reject the bad
            return self._process_rows(batch)
        return self._finish(batch, arrays, arrays), []

    def _process_rows(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]:
        from features.images import BadImage, decode

        keep, arrays, rejects = [], [], []
        for i, row in enumerate(batch.select(["sample_id", "source_path", "image"]).to_pylist()):
            try:
                arrays.append(decode(row["image"])[0])
                keep.append(i)
            except BadImage as e:
                rejects.append({"sample_id": row["sample_id"], "source_path": row["source_path"], "reason": str(e)})
        sub = batch.take(pa.array(keep, pa.int64()))
        return self._finish(sub, arrays, arrays), rejects

    def _finish(self, batch: pa.Table, arrays, originals) -> pa.Table:
        if not arrays:
            return replace_images(batch, [])
        out = replace_images(batch, self.enhance_arrays(arrays))
        n = out.num_rows
        sr_name = self._sr[0] if self._sr[1] is None else f"swinir:{self._files['sr']['file']}"
        color_name = self._color[0] if self._color[1] is None else f"ddcolor:{self._files['color']['file']}"
        colors = [color_name if is_grey(a) or self._color[0] == "none" else "none (already colour)" for a in originals]
        return set_columns(out, {
            "enhance_sr": pa.array([sr_name] * n, pa.string()),
            "enhance_color": pa.array(colors, pa.string()),
            "enhance_model": pa.array([json.dumps(self.settings(), sort_keys=True)] * n, pa.string()),
            "source_pixel_hash": batch.column("pixel_hash"),
        })
