"""The stage runner: batched, resumable, content-addressed and sharded.

`run_stage` runs a stage (pipeline/stage.py) over a manifest: it plans the batches, skips the
ones already done, runs the rest, and combines the parts into one output file, atomically.
Planning, content addressing and the part files live in pipeline/parts.py, which the Ray
executor (pipeline/ray_executor.py) shares, so both give the same parts:

* **Resumable**: a run killed even by SIGKILL leaves only whole parts; a re-run finds them and
  counts them as `reused`.
* **Deterministic**: the combined output is sorted by sample_id, so a resumed run, an
  uninterrupted run and the merge of N shards give the same rows in the same order.
* **Sharded**: `shard=(i, N)` runs one deterministic slice; `merge_shards` unions the shard
  files (and checks no row is lost or repeated).

The progress bar and the one-line errors of the stage commands are at the CLI edge
(pipeline/commands/edge.py); this module reports progress through a callback only.
Everything heavy (torch, duckdb) is imported inside the functions that need it.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from features.manifest import (
    atomic_write_bytes,
    check_schema,
    open_manifest,
    read_manifest,
    sweep_stale_tmp,
    to_table,
    write_manifest,
)
from features.schema import META_PRODUCER, groups_of
from pipeline.parts import (
    RunConfig,
    batch_key,
    bind_device,
    is_manifest,
    normalise,
    out_path_base,
    part_path,
    plan_batches,
    read_part,
    shard_path,
    write_part,
)
from pipeline.stage import Stage, StageError

Progress = Callable[[int, int], None]


@dataclass
class StageReport:
    stage: str
    rows_in: int = 0
    rows_out: int = 0
    rejected: int = 0
    reused: int = 0          # batches found already done
    batches: int = 0
    computed_rows: int = 0   # rows actually run through the stage in this call, in this process
    remote_rows: int = 0     # rows run on Ray workers in this call (--executor ray)
    seconds: float = 0.0
    images_per_s: float = 0.0  # (computed_rows + remote_rows) / time spent in process() and on Ray
    out_path: Path | None = None
    rejects_path: Path | None = None
    summary: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


# --------------------------------------------------------------------------- running


def run_stage(
    stage: Stage,
    in_path: str | Path,
    out_path: str | Path,
    cfg: RunConfig = RunConfig(),
    progress: Progress | None = None,
) -> StageReport:
    """Run `stage` over the manifest at `in_path`; write `out_path` (or its shard file) atomically.

    Returns the counts (rows in/out, rejected, batches reused and computed, images/s). Raises
    ManifestError for a bad input, StageError for a stage that cannot run as asked."""
    in_path = Path(in_path)
    table, label_set = read_manifest(in_path)  # schema + version checked, clear error otherwise
    in_groups = groups_of(table.schema)
    out_path = shard_path(out_path, cfg.shard)
    stage_dir = _stage_dir(stage, out_path, cfg.work_dir)

    t0 = time.perf_counter()
    ray_done = _run_on_ray(stage, in_path, stage_dir, cfg)
    batches = plan_batches(table, cfg.batch_size, cfg.shard)
    report = StageReport(stage=stage.name, rows_in=sum(b.num_rows for b in batches), batches=len(batches))
    parts, rejects, keys, compute_s = _local_pass(stage, batches, stage_dir, cfg.device, in_groups, report,
                                                  progress)
    result = _combine(parts) if parts else _empty_output(stage, table.schema)
    summarize = getattr(stage, "summarize", None)
    report.summary = summarize(result) if summarize else {}
    producer = _producer(stage, in_path, in_groups, cfg, report, len(rejects))
    _write_output(stage, result, out_path, label_set, producer)
    report.rows_out = result.num_rows
    report.rejected = len(rejects)
    report.out_path = out_path
    report.rejects_path = _write_rejects(_rejects_path(out_path), rejects)
    if not cfg.keep_work:
        for key in keys:
            part_path(stage_dir, key).unlink(missing_ok=True)
    report.seconds = time.perf_counter() - t0
    if ray_done is not None:
        # those rows ran on Ray, not in the local pass (which found their parts done): images/s
        # counts them over the wall time of the Ray pass (actor start-up included: a user waits for it)
        report.remote_rows = ray_done["rows"]
        compute_s += ray_done["seconds"]
    rows_run = report.computed_rows + report.remote_rows
    report.images_per_s = rows_run / compute_s if compute_s > 0 else 0.0
    return report


def _stage_dir(stage: Stage, out_path: Path, work_dir: Path | None) -> Path:
    """`<work_dir>/<stage>` (default work dir: OUT.work/, shared by every shard of one job), swept of
    the temp files a killed run left (their writers are dead)."""
    work = Path(work_dir) if work_dir else Path(str(out_path_base(out_path)) + ".work")
    stage_dir = work / stage.name
    sweep_stale_tmp(stage_dir)
    sweep_stale_tmp(out_path.parent)
    return stage_dir


def _run_on_ray(stage: Stage, in_path: Path, stage_dir: Path, cfg: RunConfig) -> dict | None:
    """With --executor ray: the missing parts computed on Ray first (counts), else None."""
    if cfg.executor == "ray":
        from pipeline.ray_executor import compute_parts

        return compute_parts(stage, in_path, stage_dir, replace(cfg, executor="local"), cfg.ray)
    if cfg.executor != "local":
        raise StageError(f"unknown executor {cfg.executor!r}; use local or ray")
    return None


def _local_pass(stage: Stage, batches: list[pa.Table], stage_dir: Path, device: str, in_groups: list[str],
                report: StageReport, progress: Progress | None) -> tuple[list[pa.Table], list[dict], list[str], float]:
    """Every batch's part, found on disk or computed here: (parts, rejects, keys, seconds in process())."""
    parts: list[pa.Table] = []
    rejects: list[dict] = []
    keys: list[str] = []
    ready = False
    compute_s = 0.0
    done = 0
    if progress:
        progress(0, report.rows_in)
    for batch in batches:
        key = batch_key(stage, batch)
        keys.append(key)
        found = read_part(part_path(stage_dir, key))
        if found is not None:
            report.reused += 1
        else:
            if not ready:  # load the model only when some batch needs it
                bind_device(stage, device)
                stage.setup()
                ready = True
            compute_s += _compute_part(stage, batch, part_path(stage_dir, key), in_groups)
            report.computed_rows += batch.num_rows
            found = _read_back(part_path(stage_dir, key))
        parts.append(found[0])
        rejects.extend(found[1])
        done += batch.num_rows
        if progress:
            progress(done, report.rows_in)
    return parts, rejects, keys, compute_s


def _compute_part(stage: Stage, batch: pa.Table, path: Path, in_groups: list[str]) -> float:
    """Run one batch through the stage and write its part; returns the seconds spent in process()."""
    t = time.perf_counter()
    out, rejects = stage.process(batch)
    seconds = time.perf_counter() - t
    write_part(path, normalise(stage, out, in_groups), rejects)
    return seconds


def _read_back(path: Path) -> tuple[pa.Table, list[dict]]:
    # use the part as read back from disk, so fresh and reused parts are alike to the byte
    # (Parquet renames list items 'item' -> 'element' on the way through)
    found = read_part(path)
    if found is None:
        raise StageError(f"could not read back the part just written: {path}")
    return found


def _producer(stage: Stage, in_path: Path, in_groups: list[str], cfg: RunConfig, report: StageReport,
              rejected: int) -> dict:
    """The provenance stamped into the output's metadata."""
    return {
        "stage": stage.name,
        "settings": stage.settings(),
        "input": in_path.name,
        "input_groups": in_groups,
        "shard": list(cfg.shard) if cfg.shard else None,
        "rows_in": report.rows_in,
        "rejected": rejected,
        "summary": report.summary,
    }


def _combine(parts: list[pa.Table]) -> pa.Table:
    table = pa.concat_tables(parts, promote_options="default") if parts else None
    if table is None:
        raise StageError("no parts to combine")
    # sample_id order: the same for a resumed run, an uninterrupted run and merged shards
    return table.sort_by("sample_id")


def _empty_output(stage: Stage, in_schema: pa.Schema) -> pa.Table:
    groups = tuple(dict.fromkeys([*groups_of(in_schema), *stage.groups]))
    return to_table([], groups=groups)


def _rejects_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".rejects.jsonl")


def _write_rejects(path: Path, rejects: list[dict]) -> Path | None:
    if not rejects:
        if path.exists():
            path.unlink()  # a stale report from an earlier run would mislead
        return None
    text = "".join(json.dumps(r, sort_keys=True, default=str) + "\n" for r in rejects)
    atomic_write_bytes(path, lambda tmp: Path(tmp).write_text(text))
    return path


def write_feature_table(table: pa.Table, path: str | Path, producer: dict) -> Path:
    """Atomic Parquet write of a feature table keyed by sample_id, with the producer stamped."""
    meta = dict(table.schema.metadata or {})
    meta[META_PRODUCER] = json.dumps(producer, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    return atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _write_output(stage: Stage, table: pa.Table, out_path: Path, label_set, producer: dict) -> None:
    custom = getattr(stage, "write_output", None)
    if custom is not None:
        custom(table, out_path, producer)
    elif is_manifest(table):
        write_manifest(table, out_path, label_set, producer=producer)
    else:
        write_feature_table(table, out_path, producer)


# --------------------------------------------------------------------------- merging shards


def _read_any(path: Path) -> tuple[pa.Table, Any]:
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise StageError(f"shard {path} does not exist; run the stage with the matching --shard i/N") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise StageError(f"shard {path} is not a readable Parquet file ({e})") from None
    if is_manifest(schema):
        return read_manifest(path)
    return pq.read_table(path), None


def _check_shard_set(paths: Sequence[Path]) -> None:
    """When the names say `shard-i-of-N`, all N must be there, once each."""
    seen: dict[int, set[int]] = {}
    for p in paths:
        m = re.search(r"\.shard-(\d+)-of-(\d+)", p.name)
        if m:
            seen.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    for n, got in seen.items():
        missing = sorted(set(range(n)) - got)
        if missing:
            raise StageError(f"shards {missing} of {n} are missing; run them with --shard i/{n} first")


def merge_shards(
    paths: Sequence[str | Path], out_path: str | Path, check_in: str | Path | None = None
) -> dict:
    """Union shard outputs into `out_path` atomically; refuse duplicates, optionally check coverage.

    With `check_in` (the input manifest the shards were made from) every input sample_id must be
    in the output or in a shard's rejects report, and nothing else may be there.
    """
    import duckdb

    paths = [Path(p) for p in paths]
    if not paths:
        raise StageError("no shard files given")
    _check_shard_set(paths)
    tables, label_set, producers = [], None, []
    for p in paths:
        t, ls = _read_any(p)
        if tables and is_manifest(t) != is_manifest(tables[0]):
            raise StageError(f"{p} is a {'manifest' if is_manifest(t) else 'feature file'}, "
                             f"{paths[0]} is not; merge shards of one stage run only")
        if ls is not None and label_set is not None and ls != label_set:
            raise StageError(f"{p} uses label set {ls.name!r}, {paths[0]} uses {label_set.name!r}")
        label_set = label_set or ls
        tables.append(t)
        producers.append(json.loads((pq.read_schema(p).metadata or {}).get(META_PRODUCER, b"{}")))
    merged = _combine([t.replace_schema_metadata(None) for t in tables])

    con = duckdb.connect()
    con.register("merged", merged.select(["sample_id"]))
    dups = con.execute("SELECT sample_id, count(*) AS n FROM merged GROUP BY sample_id HAVING n > 1 "
                   "ORDER BY sample_id LIMIT 5").fetchall()
    if dups:
        raise StageError(f"sample_ids repeated across shards, e.g. {[d[0] for d in dups]}; "
                         "was one shard given twice, or were two made with different --shard N?")
    rejects = []
    for p in paths:
        rp = _rejects_path(p)
        if rp.exists():
            rejects.extend(json.loads(line) for line in rp.read_text().splitlines() if line.strip())
    check = None
    if check_in is not None:
        check = _check_coverage(con, Path(check_in), merged, rejects)

    out_path = Path(out_path)
    producer = dict(producers[0])
    producer.pop("shard", None)
    producer["merged_from"] = [p.name for p in paths]
    producer["rejected"] = len(rejects)
    if is_manifest(merged):
        check_schema(merged.schema, str(out_path))
        write_manifest(merged, out_path, label_set, producer=producer)
    else:
        write_feature_table(merged, out_path, producer)
    rejects.sort(key=lambda r: str(r.get("sample_id")))
    _write_rejects(_rejects_path(out_path), rejects)
    return {"rows_out": merged.num_rows, "rejected": len(rejects), "shards": len(paths),
            "out_path": str(out_path), "check": check}


def _check_coverage(con, in_path: Path, merged: pa.Table, rejects: list[dict]) -> dict:
    open_manifest(in_path)
    src = str(in_path).replace("'", "''")
    con.register("rej", pa.table({"sample_id": pa.array([r.get("sample_id") for r in rejects], pa.string())}))
    con.execute(f"CREATE VIEW inp AS SELECT sample_id FROM read_parquet('{src}')")
    lost = con.execute("SELECT sample_id FROM inp EXCEPT (SELECT sample_id FROM merged UNION SELECT sample_id FROM rej) "
                   "ORDER BY 1").fetchall()
    extra = con.execute("SELECT sample_id FROM merged EXCEPT SELECT sample_id FROM inp ORDER BY 1").fetchall()
    n_in = con.execute("SELECT count(*) FROM inp").fetchone()[0]
    if lost or extra:
        raise StageError(
            f"merge --check {in_path}: {len(lost)} input rows are in no shard and no rejects report "
            f"(e.g. {[r[0] for r in lost[:3]]}), {len(extra)} rows are not in the input "
            f"(e.g. {[r[0] for r in extra[:3]]}); re-run the missing shards with the same settings")
    return {"rows_in": n_in, "rows_out": merged.num_rows, "rejected": len(rejects), "lost": 0, "extra": 0}
