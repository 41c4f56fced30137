"""`pipeline ingest`: a dataset on disk -> PREFIX_{train,val,test}.parquet manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.layouts import list_layouts  # light: the layouts import numpy/pyarrow only when reading

LAYOUT_HELP = ", ".join(["auto", *list_layouts()])


def command(
    path: Annotated[Path, typer.Argument(help="Dataset folder or file (fer2013.csv, *.parquet).")],
    out: Annotated[str, typer.Option("--out", help="Output prefix: writes PREFIX_train/_val/_test.parquet.")],
    layout: Annotated[str, typer.Option(help=f"Dataset layout: {LAYOUT_HELP}.")] = "auto",
    dataset: Annotated[Optional[str], typer.Option(help="Dataset key stored in every row (default: from the layout).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Share of the training split held out as validation.")] = 0.1,
    test_fraction: Annotated[float, typer.Option(help="Share carved out as test, only when the dataset has no test split.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Seed of the validation / test carving.")] = 0,
    label_set: Annotated[Optional[str], typer.Option(help="A registered label set (fer2013, ferplus, ckplus, rafdb, ...).")] = None,
    labels: Annotated[Optional[str], typer.Option(help="Your own classes, comma-separated (in id order for id-labelled layouts).")] = None,
    ferplus_csv: Annotated[Optional[Path], typer.Option(help="fer2013new.csv: FER+ votes joined by row onto fer2013.csv.")] = None,
    ferplus_parquet: Annotated[Optional[Path], typer.Option(help="ferplus.parquet: FER+ votes joined by fer2013_source_path.")] = None,
    fold: Annotated[int, typer.Option(help="DFEW fold (set_N).")] = 1,
    rejects: Annotated[Optional[Path], typer.Option(help="Rejects report (.csv or .parquet); default PREFIX_rejects.csv when any.")] = None,
    strict: Annotated[bool, typer.Option(help="Exit 1 and write no manifest when any image is rejected.")] = False,
    workers: Annotated[int, typer.Option(help="Decoding processes (0 = auto).")] = 0,
) -> None:
    """Read a dataset, decode and hash every image, carve validation from the training split, flag
    duplicates and test rows leaked from train, and write Parquet manifests.

    Bad images (corrupt, truncated, empty, too large) go to the rejects report and ingestion
    goes on; the exit code stays 0 unless --strict. Bad input (an unreadable dataset, an
    unwritable --out) ends in one line and exit 2 before any image is decoded; the three split
    files are written as one set (docs/errors.md)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    from pipeline.ingest import IngestConfig, IngestError, check_outputs, ingest, write_rejects, write_result

    err = Console(stderr=True, soft_wrap=True)
    cfg = IngestConfig(
        layout=layout, dataset=dataset, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
        label_set=label_set, labels=tuple(labels.split(",")) if labels else None,
        ferplus_csv=str(ferplus_csv) if ferplus_csv else None,
        ferplus_parquet=str(ferplus_parquet) if ferplus_parquet else None, fold=fold, workers=workers)
    check_outputs(out, rejects)  # an unwritable --out fails now, not after decoding every image
    try:
        with Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("decoding", total=None)
            result = ingest(path, cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    except IngestError as e:
        err.print(f"[red]pipeline ingest: {e}[/red]")
        raise typer.Exit(2) from None

    console = Console()
    if not console.is_terminal:
        console = Console(width=160)
    for note in result.notes:  # whole lines: a command in a note must stay copyable
        console.print(f"[yellow]note:[/yellow] {note}", soft_wrap=True)
    report = rejects or (Path(f"{out}_rejects.csv") if result.rejects else None)
    if report is not None:
        write_rejects(result.rejects, report)
    if strict and result.bad_images:
        err.print(f"[red]pipeline ingest: {result.bad_images} image(s) rejected (--strict); "
                  f"see {report}; no manifest written[/red]")
        raise typer.Exit(1)
    written, removed = write_result(result, out)
    _summary(console, result, written, removed, report)


def _summary(console, result, written, removed, report) -> None:
    from rich.table import Table

    t = Table(title=f"{result.dataset}: layout {result.layout}, label set {result.label_set.name}")
    for c in ("split", "rows", "leak", "file"):
        t.add_column(c)
    for s, p in written.items():
        tab = result.tables[s]
        t.add_row(s, f"{tab.num_rows:,}", f"{sum(tab.column('leak').to_pylist()):,}", str(p))
    console.print(t)
    d = result.duplicates
    console.print(f"duplicates: {d['groups']:,} groups of identical pixels, {d['redundant_copies']:,} redundant "
                  f"copies; {d['groups_train_test']:,} groups span train/test; "
                  f"{d['test_rows_leaked']:,} test rows leaked from train/val" + _by_orig(d))
    for p in removed:
        console.print(f"removed stale {p} (this run made no such split)")
    if result.dropped:
        console.print("dropped by label rule: " + ", ".join(f"{k} {v:,}" for k, v in sorted(result.dropped.items())))
    if result.bad_images:
        console.print(f"[yellow]rejected {result.bad_images:,} image(s)[/yellow] (see {report})")
    elif report is not None:
        console.print(f"rejects report: {report}")


def _by_orig(d: dict) -> str:
    parts = [f"{k} {v:,}" for k, v in d["test_rows_leaked_by_orig_split"].items()]
    return f" ({', '.join(parts)})" if parts else ""
