"""ONNX export of image models, checked against the torch outputs with onnxruntime.

Uses torch's TorchScript-based exporter (`dynamo=False`): with torch 2.14 here the dynamo
exporter needs the `onnxscript` package, which is not a dependency, while the TorchScript one
exports every image model of the registry at opset 17 (it warns that it is deprecated).
The class names and preprocessing spec travel in the ONNX file's metadata, so a runtime that
loads only the .onnx file still knows how to feed it and how to read its outputs.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

OPSET = 17


class ExportError(ValueError):
    pass


def export_onnx(model, preprocess, out: str | Path, class_names=(), opset: int = OPSET) -> Path:
    """Write `model` as ONNX with a dynamic batch axis; input 'input' (N, C, H, W), output 'logits'."""
    import torch

    from features.manifest import atomic_write_bytes

    kind = getattr(model, "input_kind", "image")
    if kind != "image" or getattr(model, "needs_text", False):
        raise ExportError(f"ONNX export covers image models; this one takes {kind} input"
                          f"{' plus caption text' if getattr(model, 'needs_text', False) else ''}")
    if opset < 17:
        raise ExportError(f"--opset {opset}: use 17 or newer")
    model = model.eval().cpu()
    x = torch.zeros(2, preprocess.channels, *preprocess.size)
    wrapped = _logits_only(model)

    def write(tmp):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapped, (x,), tmp, dynamo=False, opset_version=opset,
                              input_names=["input"], output_names=["logits"],
                              dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}})
        _add_metadata(tmp, {"affectlab.class_names": json.dumps(list(class_names)),
                            "affectlab.preprocess": json.dumps(preprocess.to_dict()),
                            "affectlab.model": getattr(model, "model_name", type(model).__name__)})

    out = Path(out)
    try:
        path = atomic_write_bytes(out, write)
    except Exception as e:  # noqa: BLE001 - torch raises many types for ops it cannot export
        raise ExportError(f"torch.onnx.export failed for {type(model).__name__}: {e}") from None
    path.chmod(0o644)  # mkstemp made the temporary file private; an exported model is meant to be shared
    return path


def _logits_only(model):
    """model(x) -> logits, with no optional arguments: the TorchScript tracer cannot bind
    FERModel's optional text inputs and keyword-only flag, and the graph has one input anyway."""
    from torch import nn

    class LogitsOnly(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            out = self.model(x)
            return out["logits"] if isinstance(out, dict) else out

    return LogitsOnly().eval()


def _add_metadata(path, props: dict[str, str]) -> None:
    import onnx

    m = onnx.load(path)
    for k, v in props.items():
        entry = m.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.save(m, path)


def onnx_metadata(path: str | Path) -> dict[str, str]:
    import onnx

    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def run_onnx(path: str | Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # this machine's 2 cores are shared; parity does not need more
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(["logits"], {"input": np.asarray(x, dtype=np.float32)})[0]


def parity(path: str | Path, model, x) -> float:
    """Max absolute difference between onnxruntime's and torch's logits on the batch `x`."""
    import torch

    with torch.inference_mode():
        ref = model.eval()(x).float().numpy()
    return float(np.abs(run_onnx(path, x.numpy()) - ref).max())
