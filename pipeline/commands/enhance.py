"""`pipeline enhance`: x4 super-resolution and colorization, each optional."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands import options


@options.run_options(batch_size=32)
def command(
    in_path: Annotated[Path, typer.Option("--in", help="Input manifest (Parquet).")],
    out: Annotated[Path, typer.Option("--out", help="Output manifest; with --shard, out.shard-i-of-N.parquet.")],
    sr: Annotated[str, typer.Option(help="none | bicubic | swinir:CHECKPOINT (an official SwinIR .pth).")] = "bicubic",
    color: Annotated[str, typer.Option(help="none | gray2rgb | ddcolor:CHECKPOINT (an official DDColor .pth); "
                                       "applied to grey images only.")] = "none",
    scale: Annotated[int, typer.Option(help="Upscaling factor (a SwinIR checkpoint fixes its own).")] = 4,
    tile: Annotated[int, typer.Option(help="SwinIR tile size in input pixels (0: whole image).")] = 256,
    precision: Annotated[str, typer.Option(help="fp32, or autocast in bf16 / fp16 / auto.")] = "fp32",
    run_config=None,
) -> None:
    """Super-resolve (bicubic or SwinIR) and colorize (gray2rgb or DDColor); provenance in the enhance columns."""
    from features.hub import WeightsNotFound
    from pipeline.enhance import EnhanceStage
    from pipeline.commands.edge import cli_run
    from pipeline.stage import StageError

    cfg = run_config
    try:
        stage = EnhanceStage(sr=sr, color=color, scale=scale, tile=tile, precision=precision)
    except (StageError, WeightsNotFound) as e:
        typer.echo(f"pipeline enhance: {e}", err=True)
        raise typer.Exit(2) from None
    cli_run(stage, in_path, out, cfg)
