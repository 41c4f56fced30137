"""DuckDB questions over manifests: the ones `pipeline stats` and the ingest benchmark ask.

Every helper takes one or more manifest paths and reads them through `read_parquet`, so the
image bytes are never loaded unless a query selects them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pyarrow as pa

from features.labels import get_preset
from features.manifest import open_manifest

Paths = str | Path | Sequence[str | Path]


def _paths(paths: Paths) -> list[str]:
    if isinstance(paths, (str, Path)):
        paths = [paths]
    out = [str(p) for p in paths]
    for p in out:
        open_manifest(p)  # schema + version check with a clear message
    return out


def connect():
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    return con


def _src(paths: list[str]) -> str:
    # union_by_name: manifests with different optional column groups still stack
    lst = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
    return f"read_parquet([{lst}], union_by_name = true)"


def query(paths: Paths, sql: str, params: list | None = None) -> pa.Table:
    """Run `sql` where the table `m` is the manifests' rows: `SELECT ... FROM m ...`."""
    ps = _paths(paths)
    con = connect()
    con.execute(f"CREATE VIEW m AS SELECT * FROM {_src(ps)}")
    return con.sql(sql, params=params or None).to_arrow_table()


def select_split(paths: Paths, split: str, columns: Sequence[str] = ("*",)) -> pa.Table:
    return query(paths, f"SELECT {', '.join(columns)} FROM m WHERE split = ? ORDER BY sample_id", [split])


def class_counts(paths: Paths, preset: str | int = "7", by: Sequence[str] = ("split",)) -> list[dict]:
    """Counts per class (after a preset) per `by` columns (split, orig_split, dataset)."""
    ps = _paths(paths)
    _, ls = open_manifest(ps[0])
    names, idx = get_preset(preset).apply(ls)
    cols = ", ".join(by)
    con = connect()
    con.execute(f"CREATE VIEW m AS SELECT * FROM {_src(ps)}")
    con.execute("CREATE TEMP TABLE pm(label_id SMALLINT, cls VARCHAR)")
    con.executemany("INSERT INTO pm VALUES (?, ?)", [[i, names[j]] for i, j in enumerate(idx)])
    rows = con.execute(
        f"SELECT {cols}, pm.cls AS class, count(*) AS n FROM m JOIN pm USING (label_id) "
        f"GROUP BY ALL ORDER BY ALL").fetchall()
    keys = list(by) + ["class", "n"]
    return [dict(zip(keys, r)) for r in rows]


def duplicates(paths: Paths) -> pa.Table:
    """Groups of rows with identical decoded pixels: pixel_hash, size, splits, label count."""
    return query(paths, """
        SELECT pixel_hash, count(*) AS copies, list(DISTINCT split ORDER BY split) AS splits,
               count(DISTINCT label) AS labels, list(sample_id ORDER BY sample_id) AS sample_ids
        FROM m GROUP BY pixel_hash HAVING count(*) > 1 ORDER BY copies DESC, pixel_hash""")


def duplicate_summary(paths: Paths) -> dict:
    """The figures PROVENANCE.md reports: groups, redundant copies, cross-split leaks."""
    t = query(paths, """
        WITH g AS (
          SELECT pixel_hash, count(*) AS n, count(DISTINCT label) AS labels,
                 bool_or(split = 'test') AS has_test, bool_or(split IN ('train', 'val')) AS has_train
          FROM m GROUP BY pixel_hash HAVING count(*) > 1)
        SELECT count(*) AS groups, coalesce(sum(n - 1), 0) AS redundant_copies,
               count(*) FILTER (WHERE has_test AND has_train) AS groups_train_test,
               count(*) FILTER (WHERE labels > 1) AS groups_conflicting_labels
        FROM g""").to_pylist()[0]
    leak = query(paths, "SELECT count(*) AS n FROM m WHERE leak").to_pylist()[0]["n"]
    return {k: int(v) for k, v in t.items()} | {"test_rows_leaked": int(leak)}


def leaked_ids(paths: Paths) -> set[str]:
    return set(query(paths, "SELECT sample_id FROM m WHERE leak").column("sample_id").to_pylist())
