"""Options every row-to-row stage command shares (batching, sharding, device, `--executor ray`),
and `make_config`, which turns them into the runner's RunConfig (pipeline/parts.py)."""

from __future__ import annotations

import functools
import inspect
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Callable

import typer

if TYPE_CHECKING:
    from pipeline.parts import RunConfig

Executor = Annotated[str, typer.Option(
    help="local (this process) or ray (Ray Data actor pool; needs `pip install 'affectlab\\[ray]'`).")]
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


# (name, annotation, default) of the runner options, in --help order; batch_size's default is the command's
_RUN_OPTIONS = (("batch_size", BatchSize, None), ("device", Device, "auto"), ("shard", Shard, None),
                ("work_dir", WorkDir, None), ("clean", Clean, False), ("executor", Executor, "local"),
                ("ray_address", RayAddress, None), ("concurrency", Concurrency, 2),
                ("num_gpus_per_worker", GpusPerWorker, 0.0))


def run_options(batch_size: int = 32) -> Callable:
    """Decorator for a stage command: appends the runner options every stage shares (--batch-size
    ... --num-gpus-per-worker, written once here) to its Typer signature and calls it with
    `run_config`, the RunConfig `make_config` builds from them, instead of the nine values."""
    def wrap(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = typing.get_type_hints(fn, include_extras=True)  # the command's own, resolved in its module
        own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
               if p.name != "run_config"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=ann,
                                   default=batch_size if name == "batch_size" else default)
                 for name, ann, default in _RUN_OPTIONS]

        @functools.wraps(fn)
        def command(**kw):
            run = {name: kw.pop(name) for name, _, _ in _RUN_OPTIONS}
            return fn(**kw, run_config=make_config(**run))

        command.__signature__ = sig.replace(parameters=own + extra)
        command.__annotations__ = {p.name: p.annotation for p in own + extra} | {"return": None}
        return command
    return wrap
