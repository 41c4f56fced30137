"""The CLI edge of every row-to-row stage command: a progress bar, the run, a summary table, and
one line + exit 2 for an error the user can fix. The runner below reports progress through a
callback only (pipeline/runner.py)."""

from __future__ import annotations

import time
from pathlib import Path

import typer

from pipeline.parts import RunConfig, shard_path
from pipeline.runner import StageReport, run_stage
from pipeline.stage import Stage, StageError


def cli_run(stage: Stage, in_path: str | Path, out_path: str | Path, cfg: RunConfig) -> StageReport:
    """What every stage command does: a rich progress bar, the run, a summary; clear errors.

    Errors the user can fix (bad manifest, missing checkpoint, bad option) print one message and
    exit with code 2 instead of a traceback.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TaskProgressColumn
    from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from features.cli_edge import one_line
    from features.device import DeviceError, resolve_device
    from features.hub import WeightsNotFound
    from features.manifest import ManifestError, OutputError, check_replaceable, open_manifest
    from features.weights import WeightsError

    console = Console(stderr=True)
    try:
        open_manifest(in_path)  # a bad input is reported before a progress bar appears
        # ... and an unwritable output, the input itself, or a file affectlab did not write
        check_replaceable(shard_path(out_path, cfg.shard), inputs=[in_path])
        resolve_device(cfg.device)
        with Bar(TextColumn(f"[bold]{stage.name}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                 console=console, transient=False, disable=not console.is_terminal) as bar:
            task = bar.add_task(stage.name, total=None, rate="")
            t0 = time.perf_counter()

            def update(done: int, total: int) -> None:
                dt = time.perf_counter() - t0
                bar.update(task, completed=done, total=total, rate=f"{done / dt:.1f} img/s" if dt > 0 else "")

            try:
                report = run_stage(stage, in_path, out_path, cfg, progress=update)
            except BaseException:
                bar.update(task, visible=False)  # no half-filled bar left above the error line
                raise
    except (ManifestError, StageError, WeightsNotFound, DeviceError, WeightsError, OutputError) as e:
        # typer.echo, not rich: a path in the message must not be wrapped across lines
        typer.echo(f"pipeline {stage.name}: {one_line(e)}", err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"pipeline {stage.name}", show_header=False)
    for k in ("rows_in", "rows_out", "rejected", "reused", "batches", "computed_rows", "remote_rows", "seconds",
              "images_per_s", "out_path", "rejects_path"):
        v = getattr(report, k)
        table.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    # the bar's img/s counts every row over the wall time, model load and reused parts included
    table.caption = "images_per_s: computed rows per second of computing (model load excluded)"
    console.print(table)
    if report.rejected:
        console.print(f"[yellow]{report.rejected} rows rejected: reasons in {report.rejects_path}")
    return report
