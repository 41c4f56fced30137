"""Options every row-to-row stage command shares for `--executor ray` (see pipeline/ray_executor.py)."""

from __future__ import annotations

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
