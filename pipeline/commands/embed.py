"""`pipeline embed`: frozen-encoder features (captions or images) -> a feature file keyed by sample_id."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pipeline.commands import options


@options.run_options(batch_size=64)
def command(
    in_path: Annotated[Path, typer.Option("--in", help="Input manifest (captioned, for text encoders).")],
    out: Annotated[Path, typer.Option("--out", help="Feature file to write (Parquet).")],
    encoder: Annotated[str, typer.Option("--encoder", help="minilm | distilbert (caption text); "
                                         "clip | resnet18 (images).")] = "distilbert",
    weights: Annotated[str | None, typer.Option("--weights", help="Local folder/file or HF id in the cache; "
                                                "default: the encoder's own.")] = None,
    tokens: Annotated[bool, typer.Option("--tokens/--no-tokens", help="Also store the token sequence + mask "
                                         "(text encoders, for attention fusion).")] = False,
    dtype: Annotated[str, typer.Option("--dtype", help="float16 | float32 storage.")] = "float16",
    max_length: Annotated[int, typer.Option("--max-length", min=2, help="Tokens kept per caption.")] = 64,
    run_config=None,
) -> None:
    """Embed captions (minilm, distilbert) or images (clip, resnet18) with a frozen encoder."""
    from rich.console import Console

    from features.manifest import ManifestError
    from pipeline.embed import EmbedConfig, EmbedStage, check_input
    from pipeline.commands.edge import cli_run

    console = Console(stderr=True, soft_wrap=True)
    run_cfg = run_config
    try:
        cfg = EmbedConfig(encoder=encoder, weights=weights, tokens=tokens, dtype=dtype, max_length=max_length)
        check_input(in_path, cfg)
    except (ManifestError, ValueError, KeyError) as e:
        console.print(f"[red]pipeline embed: {e.args[0] if isinstance(e, KeyError) else e}")
        raise typer.Exit(2) from None
    cli_run(EmbedStage(cfg, source=str(in_path)), in_path, out, run_cfg)
