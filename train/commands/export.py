"""`train export`: a checkpoint's image model as ONNX, checked against torch with onnxruntime."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run dir or .safetensors file.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="The .onnx file to write.")],
    opset: Annotated[int, typer.Option("--opset", min=17, help="ONNX opset (17 or newer).")] = 17,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Compare onnxruntime's logits with "
                                        "torch's on a random batch.")] = True,
) -> None:
    """Export an image model to ONNX (dynamic batch; class names and preprocessing in its metadata)."""
    from rich.console import Console

    from features.cli_edge import one_line
    from features.manifest import OutputError, check_writable
    from train.checkpoint import CheckpointError, class_names, load_trained, preprocess_of
    from train.export import ExportError, export_onnx, parity

    console = Console(stderr=True, soft_wrap=True)
    try:
        check_writable(out)  # a folder or an unwritable place is named before the model is traced
    except OutputError as e:
        typer.echo(f"train export: {one_line(e)}", err=True)
        raise typer.Exit(2) from None
    if out.suffix.lower() != ".onnx":
        typer.echo(f"train export: --out {out}: name the file .onnx (an ONNX model, which onnxruntime and "
                   "other runtimes open by that name)", err=True)
        raise typer.Exit(2)
    if out.is_file() and not _ours(out):  # an earlier export may be replaced; nothing else
        typer.echo(f"train export: --out {out} exists and is not a model affectlab exported; choose another "
                   "path, or remove that file first", err=True)
        raise typer.Exit(2)
    try:
        model, sidecar = load_trained(checkpoint)
        pre = preprocess_of(sidecar)
        path = export_onnx(model, pre, out, class_names(sidecar), opset=opset)
    except (CheckpointError, ExportError) as e:
        console.print(f"train export: {e}")
        raise typer.Exit(2)
    msg = f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB, opset {opset})"
    if check:
        import torch

        g = torch.Generator().manual_seed(0)
        diff = parity(path, model, torch.randn(4, pre.channels, *pre.size, generator=g))
        msg += f"; max |onnxruntime - torch| = {diff:.2e} on 4 random inputs"
        if diff > 1e-4:
            console.print(f"train export: {msg}: above 1e-4, the export is not faithful")
            raise typer.Exit(1)
    console.print(msg)


def _ours(path: Path) -> bool:
    """True for an ONNX file `train export` wrote (its metadata names the classes)."""
    from train.export import onnx_metadata

    try:
        return "affectlab.class_names" in onnx_metadata(path)
    except Exception:  # noqa: BLE001 - onnx raises several kinds on a file that is not ONNX
        return False
