"""Checkpoints: safetensors weights + a JSON sidecar; resume state as plain tensors.

A checkpoint is two files in a run directory, ``<name>.safetensors`` and ``<name>.json``. The
sidecar names the model and its config, so ``load_checkpoint`` rebuilds the model through the
registry; nothing is ever unpickled. Resume state (``resume.pt``) holds only tensors and plain
Python containers and is read with ``torch.load(..., weights_only=True)``.

Every file is written to a temporary name and renamed, so a crash never leaves half a file.
"""

from __future__ import annotations

import json
import platform
import random
from pathlib import Path
from typing import Any

from features.manifest import atomic_write_bytes

FORMAT = "affectlab.checkpoint/1"
RESUME_FILE = "resume.pt"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""


def library_versions() -> dict[str, str]:
    import numpy
    import torch

    out = {"python": platform.python_version(), "torch": torch.__version__, "numpy": numpy.__version__}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover - torchvision is a dependency, but the sidecar is best-effort
        pass
    try:
        from importlib.metadata import version

        out["affectlab"] = version("affectlab")
    except Exception:  # noqa: BLE001 - an uninstalled source tree has no metadata; not worth failing a save
        pass
    return out


def unwrap(model):
    """The bare model under DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") or hasattr(model, "_orig_mod"):
        model = getattr(model, "module", None) or getattr(model, "_orig_mod")
    return model


def _write_json(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True, default=str, allow_nan=True)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text + "\n"))


def save_checkpoint(path_dir: str | Path, model, sidecar: dict[str, Any], name: str = "best") -> Path:
    """Write ``<path_dir>/<name>.safetensors`` and ``<name>.json``; returns the weights path.

    ``sidecar`` is stored as given, plus ``format``, ``model`` (name + config from the model
    itself, unless given) and ``versions``. The JSON is written after the weights, so a
    sidecar on disk always describes weights that are complete.
    """
    from safetensors.torch import save_model

    from train.models.registry import config_to_dict

    model = unwrap(model)
    path_dir = Path(path_dir)
    side = dict(sidecar)
    side["format"] = FORMAT
    if "model" not in side:
        side["model"] = {"name": model.model_name, "config": config_to_dict(model.config)}
    side.setdefault("versions", library_versions())
    weights = path_dir / f"{name}.safetensors"
    # save_model (not save_file) copes with tied/shared weights and channels_last tensors
    atomic_write_bytes(weights, lambda tmp: save_model(model, tmp, metadata={"format": FORMAT}))
    _write_json(path_dir / f"{name}.json", side)
    return weights


def checkpoint_paths(path: str | Path, name: str = "best") -> tuple[Path, Path]:
    """(weights, sidecar) for a run directory, a .safetensors file, or a .json sidecar."""
    p = Path(path)
    if p.is_dir():
        weights, side = p / f"{name}.safetensors", p / f"{name}.json"
    elif p.suffix == ".json":
        weights, side = p.with_suffix(".safetensors"), p
    else:
        weights, side = p, p.with_suffix(".json")
    if not weights.exists():
        hint = f" (it holds: {', '.join(sorted(q.name for q in p.iterdir()))})" if p.is_dir() else ""
        raise CheckpointError(f"no checkpoint weights at {weights}{hint}; pass a run directory "
                              "written by `train run` or its .safetensors file")
    if not side.exists():
        raise CheckpointError(f"{weights} has no sidecar {side.name} beside it; the sidecar says "
                              "which model to build, so the weights alone cannot be loaded")
    return weights, side


def read_sidecar(path: str | Path, name: str = "best") -> dict[str, Any]:
    _, side = checkpoint_paths(path, name)
    try:
        d = json.loads(side.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{side}: not valid JSON ({e})") from None
    if d.get("format") != FORMAT or "model" not in d:
        raise CheckpointError(f"{side}: not an affectlab checkpoint sidecar (format "
                              f"{d.get('format')!r}, want {FORMAT!r})")
    return d


def load_checkpoint(path: str | Path, device: str = "cpu", name: str = "best"):
    """A run directory or a .safetensors file -> (model in eval mode, sidecar dict)."""
    from safetensors.torch import load_model

    from train.models.registry import build_model, config_from_dict

    weights, _ = checkpoint_paths(path, name)
    side = read_sidecar(weights)
    d = dict(side["model"].get("config") or {})
    for k in d:
        if k.endswith("pretrained"):
            # the checkpoint's own weights replace the ImageNet start; that file need not exist here
            d[k] = None
    model = build_model(config_from_dict(side["model"]["name"], d))
    try:
        load_model(model, str(weights), strict=True, device=str(device))
    except RuntimeError as e:
        raise CheckpointError(f"{weights}: weights do not fit the model the sidecar describes "
                              f"({side['model']['name']}): {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError (truncated/foreign file), OSError
        raise CheckpointError(f"{weights}: not a readable safetensors file ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); pass the best.safetensors "
                              "that `train run` wrote, beside its .json sidecar") from None
    model.to(device).eval()
    return model, side


def class_names(sidecar: dict) -> tuple[str, ...]:
    """The output classes of a checkpoint, in logit order; CheckpointError when the sidecar
    lacks them."""
    names = (sidecar.get("labels") or {}).get("class_names")
    if not names:
        raise CheckpointError("checkpoint sidecar lacks its class names (labels.class_names); re-save it "
                              "with this affectlab version")
    return tuple(names)


def preprocess_of(sidecar: dict):
    """The sidecar's preprocessing; CheckpointError naming the missing field when it is incomplete."""
    from train.transforms import Preprocess

    if not isinstance(sidecar.get("preprocess"), dict) or not sidecar["preprocess"]:
        raise CheckpointError("checkpoint sidecar lacks its preprocessing spec ('preprocess'); use the "
                              ".json that `train run` wrote beside the weights")
    try:
        return Preprocess.from_dict(sidecar["preprocess"])
    except ValueError as e:  # PreprocessError: a missing or bad field, named
        raise CheckpointError(str(e)) from None


# ---- the shipped model and the one loader for inference ---------------------------------

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_MODEL = "fer2013_ferplus75_vgg_small"  # train/weights/<name>.safetensors; MODEL_CARD.md says why this one


def default_checkpoint() -> Path:
    """The package's shipped default model (DEFAULT_MODEL, else the first shipped file), or a
    CheckpointError that says how to get one."""
    if (WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors").exists():
        return WEIGHTS_DIR / f"{DEFAULT_MODEL}.safetensors"
    files = sorted(WEIGHTS_DIR.glob("*.safetensors")) if WEIGHTS_DIR.is_dir() else []
    if not files:
        raise CheckpointError(
            f"no shipped model in {WEIGHTS_DIR} yet: train one (`train run --manifest M --model vgg "
            "--out runs/vgg`) and pass it with --checkpoint runs/vgg (or its .safetensors file)")
    return files[0]


def load_trained(path: str | Path | None, device: str = "cpu"):
    """What `train eval`, `train calibrate`, `train predict` and the Python API load: a run
    directory or .safetensors file (None = the shipped model) -> (model in eval mode on
    `device`, sidecar). Every failure is one CheckpointError naming the path."""
    path = default_checkpoint() if path is None else Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a run dir or its .safetensors file")
    try:
        model, sidecar = load_checkpoint(path)
    except (OSError, ValueError, KeyError) as e:
        msg = str(e)  # most loaders' messages already start with the file: name it once
        raise CheckpointError(msg if str(path) in msg else f"cannot load checkpoint {path}: {msg}") from None
    return model.to(device).eval(), sidecar


# ---- resume state -----------------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    """Every RNG the trainer draws from, as tensors and plain tuples (weights_only-safe)."""
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_resume(run_dir: str | Path, model, optimizer, scheduler, scaler, state: dict[str, Any]) -> Path:
    """One file with everything `--resume` needs, so it can never be half-updated."""
    import torch

    blob = {
        "format": FORMAT,
        "model": {k: v.detach().cpu().contiguous() for k, v in unwrap(model).state_dict().items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "state": state,
    }
    return atomic_write_bytes(Path(run_dir) / RESUME_FILE, lambda tmp: torch.save(blob, tmp))


def load_resume(run_dir: str | Path) -> dict[str, Any]:
    import torch

    path = Path(run_dir) / RESUME_FILE
    if not path.exists():
        raise CheckpointError(f"--resume: {path} does not exist; a run directory gets it after its "
                              "first finished epoch (start without --resume)")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for corrupt or unsafe files
        raise CheckpointError(f"--resume: cannot read {path} as plain tensors ({e})") from None
    if blob.get("format") != FORMAT:
        raise CheckpointError(f"--resume: {path} is not an affectlab resume file")
    return blob


def restore_resume(blob: dict[str, Any], model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Put weights, optimizer, scheduler, scaler and RNGs back; returns the loop's state dict."""
    unwrap(model).load_state_dict(blob["model"], strict=True)
    optimizer.load_state_dict(blob["optimizer"])
    if scheduler is not None and blob["scheduler"] is not None:
        scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob["scaler"] is not None:
        scaler.load_state_dict(blob["scaler"])
    set_rng_state(blob["rng"])
    return blob["state"]
