"""Options every row-to-row stage command shares for `--executor ray` (see pipeline/ray_executor.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

Executor = Annotated[str, typer.Option(
    help="local (this process) or ray (Ray Data actor pool; needs `pip install 'affectlab[ray]'`).")]
RayAddress = Annotated[str | None, typer.Option(
    "--ray-address", help="With --executor ray: default starts a local Ray on this machine's CPUs; "
    "'auto' or ray://HOST:PORT joins a running cluster.")]
Concurrency = Annotated[int, typer.Option(help="With --executor ray: actors in the pool (one model copy each).")]
GpusPerWorker = Annotated[float, typer.Option(
    "--num-gpus-per-worker", help="With --executor ray: GPUs per actor (e.g. 1 for BLIP/SwinIR/DDColor).")]

# The runner options every stage command shares (pipeline/runner.py: make_config).
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch (one image shape each).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Shard = Annotated[str | None, typer.Option("--shard", help="i/N: run the i-th of N deterministic slices "
                                           "(0-based); combine with `pipeline merge`.")]
WorkDir = Annotated[Path | None, typer.Option("--work-dir", help="Where finished batches are kept "
                                              "(default OUT.work/); a re-run reuses them.")]
Clean = Annotated[bool, typer.Option("--clean", help="Delete the finished batches after a successful run.")]
