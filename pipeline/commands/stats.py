"""`pipeline stats`: class counts per split / fold under a preset, duplicates and leaks (DuckDB)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

# Columns a count may be grouped by: the ones a manifest always has and that are categorical.
BY_COLUMNS = ("split", "orig_split", "dataset", "label_set", "leak", "synthetic", "image_format", "channels")


def collect(paths: list[Path], preset: str = "7", by: tuple[str, ...] = ("split",)) -> dict:
    """The whole report as plain data (what --json prints)."""
    from features.labels import get_preset
    from features.query import class_counts, duplicate_summary, query
    from features.manifest import check_same_set, open_manifest

    bad = [b for b in by if b not in BY_COLUMNS]
    if bad or not by:
        raise ValueError(f"--by {','.join(bad) or '(empty)'}: choose from {', '.join(BY_COLUMNS)}")
    sets = {p: open_manifest(p)[1] for p in paths}
    check_same_set(paths)  # train/val/test of one ingest: all from the same run
    first = next(iter(sets.values()))
    other = [f"{p} ({ls.name})" for p, ls in sets.items() if ls.names != first.names]
    if other:
        raise ValueError(f"manifests carry different label sets: {first.name} vs {', '.join(other)}; "
                         "run stats on each label set separately")
    classes, _ = get_preset(preset).apply(first)
    counts = class_counts(paths, preset, by)
    table: dict[tuple, dict[str, int]] = {}
    for r in counts:
        key = tuple(r[b] for b in by)
        table.setdefault(key, {c: 0 for c in classes})[r["class"]] = int(r["n"])
    leaks = query(paths, "SELECT split, orig_split, count(*) FILTER (WHERE leak) AS leaked, count(*) AS rows "
                         "FROM m GROUP BY ALL ORDER BY ALL").to_pylist()
    return {
        "manifests": [str(p) for p in paths], "label_set": first.name, "preset": str(preset),
        "classes": list(classes), "by": list(by),
        "counts": [dict(zip(by, k)) | {"counts": v, "total": sum(v.values())} for k, v in sorted(
            table.items(), key=lambda kv: tuple(str(x) for x in kv[0]))],
        "rows": sum(sum(v.values()) for v in table.values()),
        "duplicates": duplicate_summary(paths),
        "leaks": [r for r in leaks if r["leaked"]],
    }


def command(
    manifests: Annotated[list[Path], typer.Argument(help="One or more manifest Parquet files.")],
    preset: Annotated[str, typer.Option(help="Label preset: 7, 5, 4 or 2 (AffectFusion).")] = "7",
    by: Annotated[str, typer.Option(help=f"Count per these columns, comma-separated ({', '.join(BY_COLUMNS)}).")] = "split",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Class counts per split (and fold / original split) under a preset, duplicates and leak flags."""
    from rich.console import Console

    from features.manifest import ManifestError

    err = Console(stderr=True, soft_wrap=True)
    try:
        report = collect(manifests, preset, tuple(b.strip() for b in by.split(",") if b.strip()))
    except (ManifestError, ValueError, KeyError) as e:
        msg = e.args[0] if isinstance(e, KeyError) else str(e)
        err.print(f"[red]pipeline stats: {msg}[/red]")
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(report, indent=2, default=str))
        return
    console = Console()
    if not console.is_terminal:  # piped into a file or CI log: do not squeeze the table to 80 columns
        console = Console(width=160)
    _print(console, report)


def _print(console, report: dict) -> None:
    from rich.table import Table

    t = Table(title=f"class counts: label set {report['label_set']}, preset {report['preset']}")
    for b in report["by"]:
        t.add_column(b)
    for c in report["classes"]:
        t.add_column(c, justify="right")
    t.add_column("total", justify="right")
    for row in report["counts"]:
        t.add_row(*(str(row[b]) for b in report["by"]), *(f"{row['counts'][c]:,}" for c in report["classes"]),
                  f"{row['total']:,}")
    console.print(t)
    d = report["duplicates"]
    console.print(f"rows {report['rows']:,}; duplicate groups {d['groups']:,} ({d['redundant_copies']:,} redundant "
                  f"copies, {d['groups_train_test']:,} span train/test, {d['groups_conflicting_labels']:,} with "
                  f"conflicting labels); test rows leaked from train {d['test_rows_leaked']:,}")
    for r in report["leaks"]:
        console.print(f"  leak: {r['split']} / {r['orig_split']}: {r['leaked']:,} of {r['rows']:,} rows")
