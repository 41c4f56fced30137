"""`pipeline merge`: combine the shard files of one stage run (`--shard i/N`) into one file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    out: Annotated[Path, typer.Argument(help="The merged output file (manifest or feature file).")],
    shards: Annotated[list[Path], typer.Argument(help="Shard files, e.g. out.shard-0-of-4.parquet ... ")],
    check: Annotated[Path | None, typer.Option("--check", help="The input manifest the shards were made "
                                               "from: every row must be in a shard or its rejects report.")] = None,
) -> None:
    """Union shard outputs through DuckDB: refuses repeated sample_ids and missing shards; writes atomically."""
    from rich.console import Console

    from features.manifest import ManifestError, OutputError, check_replaceable
    from pipeline.runner import merge_shards
    from pipeline.stage import StageError

    console = Console(stderr=True, soft_wrap=True)
    try:
        check_replaceable(out, inputs=shards)
        res = merge_shards(shards, out, check_in=check)
    except (StageError, ManifestError, OutputError) as e:
        typer.echo(f"pipeline merge: {e}", err=True)
        raise typer.Exit(2) from None
    console.print(f"merged {res['shards']} shards -> {res['out_path']}: {res['rows_out']} rows, "
                  f"{res['rejected']} rejected" + (f"; checked against {check}: nothing lost or repeated"
                                                   if res["check"] else ""))
