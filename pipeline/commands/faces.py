"""`pipeline faces`: detect, crop and align the largest face of every row."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands import options


@options.run_options(batch_size=32)
def command(
    in_path: Annotated[Path, typer.Option("--in", help="Input manifest (Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Output manifest; with --shard, out.shard-i-of-N.parquet.")],
    backend: Annotated[str, typer.Option(help="auto (mtcnn when facenet-pytorch is installed, else haar) | mtcnn | "
                                         "haar (OpenCV) | retinaface (facexlib; needs --weights-dir).")] = "auto",
    weights_dir: Annotated[Path | None, typer.Option(
        "--weights-dir", help="Folder with detection_Resnet50_Final.pth (retinaface only).")] = None,
    pad: Annotated[float, typer.Option(help="Padding on each side, as a fraction of the face box.")] = 0.25,
    size: Annotated[int, typer.Option(help="Side of the square crop in pixels; 0 keeps the padded box's size.")] = 224,
    min_size: Annotated[int, typer.Option("--min-size", help="Smallest face side in pixels.")] = 20,
    threshold: Annotated[float, typer.Option(help="RetinaFace score threshold.")] = 0.8,
    align: Annotated[bool, typer.Option("--align/--no-align", help="Level the eyes when landmarks are found.")] = True,
    no_face: Annotated[str, typer.Option("--no-face", help="drop: rows without a face go to the rejects "
                                         "report only; keep: also keep them uncropped (face_count 0).")] = "drop",
    run_config=None,
) -> None:
    """Crop the largest face (square, padded, eyes levelled); rows with no face are reported."""
    from features.hub import WeightsNotFound
    from pipeline.faces import FaceStage
    from pipeline.commands.edge import cli_run
    from pipeline.stage import StageError

    cfg = run_config
    from features.faces import BACKENDS

    if backend not in ("auto", *BACKENDS):
        typer.echo(f"pipeline faces: --backend {backend!r}: expected one of auto, {', '.join(BACKENDS)}", err=True)
        raise typer.Exit(2)
    if backend == "auto":  # as `train predict --detector auto`: MTCNN finds more faces (docs/predict.md)
        from features.faces import auto_backend

        backend, notice = auto_backend()
        if notice:
            typer.echo(f"note: {notice}", err=True)
    try:
        stage = FaceStage(backend=backend, weights_dir=weights_dir, pad=pad, size=size or None, min_size=min_size,
                          threshold=threshold, align=align, no_face=no_face)
    except (StageError, WeightsNotFound) as e:
        typer.echo(f"pipeline faces: {e}", err=True)
        raise typer.Exit(2) from None
    cli_run(stage, in_path, out, cfg)
