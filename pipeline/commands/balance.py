"""`pipeline balance`: oversample a training manifest (BorderlineSMOTE by default)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer


def command(
    in_: Annotated[Path, typer.Option("--in", help="Training manifest (train rows only).")],
    out: Annotated[Path, typer.Option("--out", help="Balanced manifest; with --features, a balanced feature file.")],
    method: Annotated[str, typer.Option("--method", help="borderline (BorderlineSMOTE-1) | smote | random.")] = "borderline",
    features: Annotated[Path | None, typer.Option(
        "--features", help="Feature file (from `pipeline embed`) to balance in instead of pixels.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Random state; same seed, same output.")] = 0,
    target: Annotated[str, typer.Option("--target", help="'max' (the largest class) or a count per class.")] = "max",
    max_dims: Annotated[int, typer.Option("--max-dims", help="Refuse pixel spaces larger than this.")] = 20_000,
    k_neighbors: Annotated[int, typer.Option("--k-neighbors", help="Same-class neighbours to interpolate to.")] = 5,
    m_neighbors: Annotated[int, typer.Option("--m-neighbors",
                                             help="Neighbours BorderlineSMOTE uses to find 'danger' rows.")] = 10,
    strict: Annotated[bool, typer.Option("--strict", help="Exit 1 (writing nothing) when a class misses its target.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Oversample the training split to balance its classes; new rows are flagged synthetic with parent ids.

    Pixel space (default): synthetic images are appended to the manifest. With --features: the vectors are balanced and --out is a feature file (sample_id, vector, label, label_id, synthetic, parent_ids); images are left alone.
    """
    from rich.console import Console

    from features.manifest import (ManifestError, OutputError, check_replaceable, file_sha256, read_manifest,
                                   write_manifest)
    from pipeline.balance import BalanceConfig, BalanceError, balance_manifest, parse_target

    console = Console(stderr=True, soft_wrap=True)  # whole lines: error messages stay greppable
    try:
        cfg = BalanceConfig(method=method, seed=seed, target=parse_target(target), max_dims=max_dims,
                            k_neighbors=k_neighbors, m_neighbors=m_neighbors)
        table, label_set = read_manifest(in_)
        check_replaceable(out, inputs=[in_, *([features] if features else [])])
        producer = {"command": "pipeline balance", "source": str(in_), "source_sha256": file_sha256(in_, 16),
                    "features": str(features) if features else None,
                    **{k: v for k, v in vars(cfg).items()}}
        with console.status("balancing") as status:
            say = lambda msg: status.update(msg)  # noqa: E731
            if features is None:
                result, rep = balance_manifest(table, label_set, cfg, where=str(in_), progress=say)
            else:
                result, rep = _balance_in_features(table, label_set, cfg, features, in_, say)
    except (BalanceError, ManifestError, OutputError, ValueError) as e:
        # ValueError: a feature-file error from features.encoders, or imblearn's own checks.
        # typer.echo, not rich: the message's paths and [brackets] stay as they are
        typer.echo(f"pipeline balance: {e}", err=True)
        raise typer.Exit(2) from None

    if rep["shortfalls"] and strict:
        _print(console, rep, as_json)
        console.print("[red]not written[/]: --strict and a class missed its target")
        raise typer.Exit(1)
    if features is None:
        write_manifest(result, out, label_set, producer)
    else:
        from features.encoders import features_meta, write_features

        write_features(result, out, {**features_meta(features), "balanced": producer,
                                     "source_manifest": str(in_)})
    _print(console, rep, as_json)
    console.print(f"wrote {out} ({rep['rows_in']:,} rows + {rep['rows_new']:,} synthetic, {rep['seconds']} s)")


def _balance_in_features(table, label_set, cfg, features: Path, in_: Path, say):
    from features.encoders import read_features
    from pipeline.balance import balance_features, check_train_only

    check_train_only(table.column("split").to_pylist(), str(in_))
    say(f"reading vectors from {features}")
    vectors = read_features(features, table.column("sample_id").to_pylist())
    say(f"oversampling with {cfg.method}")
    return balance_features(table, vectors, label_set, cfg, where=str(in_))


def _print(console, rep: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(rep, indent=2))
        return
    from rich.table import Table

    t = Table(title=f"balance ({rep['settings']['method']}, {rep['space']})")
    for col in ("class", "before", "target", "after"):
        t.add_column(col, justify="left" if col == "class" else "right")
    for c in rep["classes"]:
        t.add_row(c["label"], f"{c['before']:,}", f"{c['target']:,}", f"{c['after']:,}")
    console.print(t)
    for msg in rep["shortfalls"]:
        console.print(f"[yellow]warning:[/] {msg}")
    if not rep["parents_exact"]:
        console.print(f"[yellow]warning:[/] some parent_ids are approximate (a synthetic row lies "
                      f"{rep['parent_max_distance']:.3g} from its parents' segment)")
