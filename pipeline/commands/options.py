"""Options every row-to-row stage command shares (batching, sharding, device, `--executor ray`),
and `make_config`, which turns them into the runner's RunConfig (pipeline/parts.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from pipeline.parts import RunConfig

Executor = Annotated[str, typer.Option(
    help="local (this process) or ray (Ray Data actor pool; needs `pip install 'affectlab[ray]'`).")]
RayAddress = Annotated[str | None, typer.Option(
    "--ray-address", help="With --executor ray: default starts a local Ray on this machine's CPUs; "
    "'auto' or ray://HOST:PORT joins a running cluster.")]
Concurrency = Annotated[int, typer.Option(help="With --executor ray: actors in the pool (one model copy each).")]
GpusPerWorker = Annotated[float, typer.Option(
    "--num-gpus-per-worker", help="With --executor ray: GPUs per actor (e.g. 1 for BLIP/SwinIR/DDColor).")]

# The runner options every stage command shares (make_config below).
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Rows per batch (one image shape each).")]
Device = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
Shard = Annotated[str | None, typer.Option("--shard", help="i/N: run the i-th of N deterministic slices "
                                           "(0-based); combine with `pipeline merge`.")]
WorkDir = Annotated[Path | None, typer.Option("--work-dir", help="Where finished batches are kept "
                                              "(default OUT.work/); a re-run reuses them.")]
Clean = Annotated[bool, typer.Option("--clean", help="Delete the finished batches after a successful run.")]


def make_config(batch_size: int = 32, shard: str | None = None, work_dir: Path | None = None,
                device: str = "auto", clean: bool = False, executor: str = "local",
                ray_address: str | None = None, concurrency: int = 2,
                num_gpus_per_worker: float = 0.0) -> RunConfig:
    """RunConfig from the options every stage command shares; a bad --shard is a Typer usage error."""
    from pipeline.parts import RayConfig, RunConfig, parse_shard  # not at import: `--help` stays instant

    try:
        sh = parse_shard(shard)
    except ValueError as e:
        raise typer.BadParameter(str(e), param_hint="--shard") from None
    if batch_size < 1:
        raise typer.BadParameter(f"must be >= 1, got {batch_size}", param_hint="--batch-size")
    if executor not in ("local", "ray"):
        raise typer.BadParameter(f"{executor!r}: use local or ray", param_hint="--executor")
    ray = RayConfig(address=ray_address, concurrency=concurrency, num_gpus_per_worker=num_gpus_per_worker)
    return RunConfig(batch_size=batch_size, shard=sh, work_dir=work_dir, device=device, keep_work=not clean,
                     executor=executor, ray=ray)
