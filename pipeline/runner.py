"""The stage runner: batched, resumable, content-addressed and sharded.

A *stage* (faces, enhance, caption, embed) is a small picklable object that maps a batch of
manifest rows to output rows. `run_stage` plans the batches, skips the ones already done, runs
the rest, and combines the parts into one output file, atomically:

* **Content-addressed**: each batch's output lands in `<work_dir>/<stage>/<batch_key>.parquet`,
  where the key hashes the stage name, its settings (model, checkpoint sha256, parameters) and
  the batch's input content. Change a setting or an input row and the key changes, so nothing
  stale is ever reused.
* **Resumable**: parts are written atomically (temporary file, then rename), so a run killed
  even by SIGKILL leaves only whole parts; a re-run finds them and counts them as `reused`.
* **Deterministic**: batches are planned from rows sorted by sample_id, grouped by image shape;
  the combined output is sorted by sample_id, so a resumed run, an uninterrupted run and the
  merge of N shards give the same rows in the same order.
* **Sharded**: `shard=(i, N)` keeps the rows whose stable hash(sample_id) % N == i (0-based);
  `merge_shards` unions the shard files (and checks no row is lost or repeated).

Optional hooks a stage may define (looked up with getattr, so the Protocol stays small):
`device` (attribute: set by run_stage from RunConfig.device before setup()),
`summarize(out_table) -> dict` (stored under "summary" in the producer metadata and returned in
the report: e.g. the caption stage's emotion-word counts), and
`write_output(table, path, producer)` (a stage that writes a feature file in its own format).

Everything heavy (torch) is imported inside the functions that need it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import pyarrow as pa
import pyarrow.parquet as pq

from features.manifest import (
    ManifestError,
    atomic_write_bytes,
    check_schema,
    open_manifest,
    read_manifest,
    sweep_stale_tmp,
    to_table,
    write_manifest,
)
from features.schema import CORE, META_PRODUCER, groups_of

# Bump when the part-file layout or the key recipe changes: old parts then never match.
PART_FORMAT = "1"
META_REJECTS = b"affectlab.rejects"
IMAGE_COLUMNS = ("image", "image_format", "width", "height", "channels", "pixel_hash")

Progress = Callable[[int, int], None]


class StageError(RuntimeError):
    """A stage cannot run as asked (bad option, missing checkpoint, wrong input); the message says why."""


@runtime_checkable
class Stage(Protocol):
    name: str
    groups: tuple[str, ...]

    def settings(self) -> dict: ...

    def setup(self) -> None: ...

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]: ...


@dataclass(frozen=True)
class RayConfig:
    """Where and how wide `--executor ray` runs (see pipeline/ray_executor.py)."""

    address: str | None = None          # None: start a local Ray with this machine's CPUs
    concurrency: int = 2                # actors in the pool (one model copy each)
    num_gpus_per_worker: float = 0.0    # > 0: an actor pool on GPUs (BLIP, SwinIR, DDColor)
    num_cpus_per_worker: float = 1.0


@dataclass(frozen=True)
class RunConfig:
    batch_size: int = 32
    shard: tuple[int, int] | None = None
    work_dir: Path | None = None
    device: str = "auto"
    # Keep the per-batch parts after a successful run, so a later run with the same settings
    # (or the other half of an interrupted sweep) reuses them; the CLI's --clean drops them.
    keep_work: bool = True
    # "local": this process; "ray": the missing batches run on Ray Data first, then the local
    # pass below finds every part done and only combines them (so both give the same rows).
    executor: str = "local"
    ray: RayConfig = RayConfig()


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


# --------------------------------------------------------------------------- planning


def shard_of(sample_id: str, n: int) -> int:
    """Stable across processes and machines (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha1(sample_id.encode()).digest()[:8], "big") % n


def parse_shard(text: str | None) -> tuple[int, int] | None:
    """'i/N' (0-based i) -> (i, N). Raises ValueError with a message that shows the form."""
    if text is None or text == "":
        return None
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise ValueError(f"--shard {text!r}: expected i/N with 0 <= i < N, e.g. 0/4 ... 3/4")
    return int(m.group(1)), int(m.group(2))


def shard_path(out_path: str | Path, shard: tuple[int, int] | None) -> Path:
    """out.parquet -> out.shard-i-of-N.parquet (unchanged when not sharded)."""
    out_path = Path(out_path)
    if shard is None:
        return out_path
    i, n = shard
    return out_path.with_name(f"{out_path.stem}.shard-{i}-of-{n}{out_path.suffix or '.parquet'}")


def plan_batches(table: pa.Table, batch_size: int, shard: tuple[int, int] | None = None) -> list[pa.Table]:
    """Deterministic batches: shard filter, rows sorted by sample_id, one image shape per batch."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    ids = table.column("sample_id").to_pylist()
    if shard is not None:
        i, n = shard
        keep = [k for k, s in enumerate(ids) if shard_of(s, n) == i]
        table = table.take(pa.array(keep, pa.int64()))
        ids = [ids[k] for k in keep]
    shape_cols = [c for c in ("height", "width", "channels") if c in table.column_names]
    shapes = list(zip(*(table.column(c).to_pylist() for c in shape_cols))) if shape_cols else [()] * len(ids)
    # group by shape (sorted shape keys), sample_id order inside a group
    order = sorted(range(len(ids)), key=lambda k: (shapes[k], ids[k]))
    batches: list[pa.Table] = []
    start = 0
    while start < len(order):
        shape = shapes[order[start]]
        end = start
        while end < len(order) and end - start < batch_size and shapes[order[end]] == shape:
            end += 1
        batches.append(table.take(pa.array(order[start:end], pa.int64())))
        start = end
    return batches


def settings_json(stage: Stage) -> str:
    return json.dumps(stage.settings(), sort_keys=True, default=str)


def batch_key(stage: Stage, batch: pa.Table) -> str:
    """sha1 of the stage name, its settings and the batch's input content.

    The (sample_id, pixel_hash) list addresses the pixels; the other non-image columns are
    hashed too, because a part also carries them through (a relabelled or re-split row must not
    come back with its old label from a stale part).
    """
    h = hashlib.sha1()
    h.update(f"part-format {PART_FORMAT}\0{stage.name}\0{settings_json(stage)}\0".encode())
    ids = batch.column("sample_id").to_pylist()
    hashes = batch.column("pixel_hash").to_pylist() if "pixel_hash" in batch.column_names else [None] * len(ids)
    h.update(json.dumps(list(zip(ids, hashes))).encode())
    rest = batch.drop_columns([c for c in ("image",) if c in batch.column_names])
    h.update(json.dumps(rest.to_pylist(), sort_keys=True, default=str).encode())
    return h.hexdigest()


# --------------------------------------------------------------------------- running


def _is_manifest(table: pa.Table) -> bool:
    return all(c.name in table.column_names for c in CORE)


def _write_part(path: Path, table: pa.Table, rejects: list[dict]) -> None:
    meta = dict(table.schema.metadata or {})
    meta[META_REJECTS] = json.dumps(rejects, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def _read_part(path: Path) -> tuple[pa.Table, list[dict]] | None:
    """A finished part, or None when it is missing or unreadable (then it is recomputed)."""
    if not path.exists():
        return None
    try:
        table = pq.read_table(path)
    except (pa.ArrowInvalid, OSError):
        return None
    meta = table.schema.metadata or {}
    rejects = json.loads(meta.get(META_REJECTS, b"[]"))
    return table.replace_schema_metadata(None), rejects


def _normalise(stage: Stage, out: pa.Table, in_groups: list[str]) -> pa.Table:
    """Manifest rows -> exactly the schema of input groups + the stage's groups."""
    if not stage.groups and not _is_manifest(out):
        if "sample_id" not in out.column_names:
            raise StageError(f"stage {stage.name!r} returned a table without a sample_id column")
        return out
    try:
        return to_table(out, groups=tuple(dict.fromkeys([*in_groups, *stage.groups])))
    except (ManifestError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise StageError(f"stage {stage.name!r} returned rows that do not fit the manifest schema: {e}") from None


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
    elif _is_manifest(table):
        write_manifest(table, out_path, label_set, producer=producer)
    else:
        write_feature_table(table, out_path, producer)


def _bind_device(stage: Stage, device: str) -> None:
    if hasattr(stage, "device"):
        stage.device = resolve_device(device)


def run_stage(
    stage: Stage,
    in_path: str | Path,
    out_path: str | Path,
    cfg: RunConfig = RunConfig(),
    progress: Progress | None = None,
) -> StageReport:
    """Run `stage` over the manifest at `in_path`; write `out_path` (or its shard file) atomically."""
    in_path = Path(in_path)
    table, label_set = read_manifest(in_path)  # schema + version checked, clear error otherwise
    in_groups = groups_of(table.schema)
    out_path = shard_path(out_path, cfg.shard)
    work = Path(cfg.work_dir) if cfg.work_dir else Path(str(out_path_base(out_path)) + ".work")
    stage_dir = work / stage.name
    # a run killed mid-write left temp files; the writers are dead, so their files go
    sweep_stale_tmp(stage_dir)
    sweep_stale_tmp(out_path.parent)

    t0 = time.perf_counter()
    if cfg.executor == "ray":
        from pipeline.ray_executor import compute_parts

        ray_done = compute_parts(stage, in_path, stage_dir, replace(cfg, executor="local"), cfg.ray)
    elif cfg.executor != "local":
        raise StageError(f"unknown executor {cfg.executor!r}; use local or ray")
    batches = plan_batches(table, cfg.batch_size, cfg.shard)
    report = StageReport(stage=stage.name, rows_in=sum(b.num_rows for b in batches), batches=len(batches))
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
        part_file = stage_dir / f"{key}.parquet"
        found = _read_part(part_file)
        if found is not None:
            report.reused += 1
        else:
            if not ready:  # load the model only when some batch needs it
                _bind_device(stage, cfg.device)
                stage.setup()
                ready = True
            tb = time.perf_counter()
            out, rej = stage.process(batch)
            compute_s += time.perf_counter() - tb
            out = _normalise(stage, out, in_groups)
            _write_part(part_file, out, rej)
            report.computed_rows += batch.num_rows
            # use the part as read back from disk, so fresh and reused parts are alike to the byte
            # (Parquet renames list items 'item' -> 'element' on the way through)
            found = _read_part(part_file)
            if found is None:
                raise StageError(f"could not read back the part just written: {part_file}")
        parts.append(found[0])
        rejects.extend(found[1])
        done += batch.num_rows
        if progress:
            progress(done, report.rows_in)

    result = _combine(parts) if parts else _empty_output(stage, table.schema)
    summarize = getattr(stage, "summarize", None)
    report.summary = summarize(result) if summarize else {}
    producer = {
        "stage": stage.name,
        "settings": stage.settings(),
        "input": in_path.name,
        "input_groups": in_groups,
        "shard": list(cfg.shard) if cfg.shard else None,
        "rows_in": report.rows_in,
        "rejected": len(rejects),
        "summary": report.summary,
    }
    _write_output(stage, result, out_path, label_set, producer)
    report.rows_out = result.num_rows
    report.rejected = len(rejects)
    report.out_path = out_path
    report.rejects_path = _write_rejects(_rejects_path(out_path), rejects)
    if not cfg.keep_work:
        for key in keys:
            (stage_dir / f"{key}.parquet").unlink(missing_ok=True)
    report.seconds = time.perf_counter() - t0
    if cfg.executor == "ray":
        # those rows ran on Ray, not in the local pass (which found their parts done): images/s
        # counts them over the wall time of the Ray pass (actor start-up included: a user waits for it)
        report.remote_rows = ray_done["rows"]
        compute_s += ray_done["seconds"]
    rows_run = report.computed_rows + report.remote_rows
    report.images_per_s = rows_run / compute_s if compute_s > 0 else 0.0
    return report


def out_path_base(out_path: Path) -> Path:
    """The un-sharded output path (so every shard of one job shares one work dir by default)."""
    m = re.fullmatch(r"(.*)\.shard-\d+-of-\d+(\.[^.]*)?", out_path.name)
    return out_path.with_name(m.group(1) + (m.group(2) or "")) if m else out_path


# --------------------------------------------------------------------------- merging shards


def _read_any(path: Path) -> tuple[pa.Table, Any]:
    try:
        schema = pq.read_schema(path)
    except FileNotFoundError:
        raise StageError(f"shard {path} does not exist; run the stage with the matching --shard i/N") from None
    except (pa.ArrowInvalid, OSError) as e:
        raise StageError(f"shard {path} is not a readable Parquet file ({e})") from None
    if all(c.name in schema.names for c in CORE):
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
            raise StageError(f"merge: shards {missing} of {n} are missing; run them with --shard i/{n} first")


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
        raise StageError("merge: no shard files given")
    _check_shard_set(paths)
    tables, label_set, producers = [], None, []
    for p in paths:
        t, ls = _read_any(p)
        if tables and _is_manifest(t) != _is_manifest(tables[0]):
            raise StageError(f"merge: {p} is a {'manifest' if _is_manifest(t) else 'feature file'}, "
                             f"{paths[0]} is not; merge shards of one stage run only")
        if ls is not None and label_set is not None and ls != label_set:
            raise StageError(f"merge: {p} uses label set {ls.name!r}, {paths[0]} uses {label_set.name!r}")
        label_set = label_set or ls
        tables.append(t)
        producers.append(json.loads((pq.read_schema(p).metadata or {}).get(META_PRODUCER, b"{}")))
    merged = _combine([t.replace_schema_metadata(None) for t in tables])

    con = duckdb.connect()
    con.register("merged", merged.select(["sample_id"]))
    dups = con.execute("SELECT sample_id, count(*) AS n FROM merged GROUP BY sample_id HAVING n > 1 "
                   "ORDER BY sample_id LIMIT 5").fetchall()
    if dups:
        raise StageError(f"merge: sample_ids repeated across shards, e.g. {[d[0] for d in dups]}; "
                         "were two shard files made with different --shard N?")
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
    if _is_manifest(merged):
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


# --------------------------------------------------------------------------- devices


def resolve_device(device: str = "auto") -> str:
    """'auto' -> 'cuda' when a GPU is usable, else 'cpu'. 'cuda' without one is a clear error
    (features.device.DeviceError, the resolver every command shares)."""
    from features.device import resolve_device as resolve

    return resolve(device)


def autocast_dtype(device: str, dtype: str | None = "auto"):
    """The torch dtype autocast should use, or None for plain float32.

    'auto' means bf16 on CPU (measured 1.6-2.7x on this machine for transformer stages) and
    bf16 on GPUs that support it, else fp16.
    """
    import torch

    if dtype is None or dtype in ("none", "fp32", "float32"):
        return None
    if dtype in ("bf16", "bfloat16"):
        return torch.bfloat16
    if dtype in ("fp16", "float16"):
        return torch.float16
    if dtype != "auto":
        raise StageError(f"autocast dtype {dtype!r}: expected auto, bf16, fp16 or fp32")
    if device.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def autocast_context(device: str, dtype: str | None = "auto"):
    """A torch.autocast context for `device` (or a no-op context for fp32)."""
    dt = autocast_dtype(device, dtype)
    if dt is None:
        return nullcontext()
    import torch

    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dt)


def oom_retry(fn: Callable[[Any], Any], items: Any, min_size: int = 1) -> Any:
    """fn(items); on CUDA out-of-memory, run the two halves instead (recursively) and join.

    `items` is a list or a tensor (split along dim 0); the results are joined the same way
    (lists concatenated, tensors with torch.cat). Below `min_size` the error is re-raised.
    """
    import torch

    try:
        return fn(items)
    except torch.cuda.OutOfMemoryError:
        n = len(items)
        if n <= min_size or n < 2:
            raise
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
        half = n // 2
        a = oom_retry(fn, items[:half], min_size)
        b = oom_retry(fn, items[half:], min_size)
        return _join(a, b)


def _join(a: Any, b: Any) -> Any:
    """Concatenate two halves' results: tensors and arrays along dim 0, lists, tuples per item."""
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        return torch.cat([a, b])
    if isinstance(a, np.ndarray):  # `+` would add elementwise
        return np.concatenate([a, b])
    if isinstance(a, tuple):
        return tuple(_join(x, y) for x, y in zip(a, b))
    return list(a) + list(b)


# --------------------------------------------------------------------------- image helpers


def decode_batch(batch: pa.Table):
    """The batch's images as uint8 arrays (HxW grey or HxWx3 RGB), in row order."""
    from features.images import decode

    return [decode(b)[0] for b in batch.column("image").to_pylist()]


def replace_images(batch: pa.Table, arrays: Sequence, fmt: str = "png") -> pa.Table:
    """Put new pixels into the batch: image bytes, format, size, channels and pixel_hash."""
    from features.images import channels, encode, pixel_hash

    if len(arrays) != batch.num_rows:
        raise StageError(f"replace_images: {len(arrays)} images for {batch.num_rows} rows")
    cols = {
        "image": pa.array([encode(a, fmt) for a in arrays], pa.binary()),
        "image_format": pa.array([fmt] * len(arrays), pa.string()),
        "width": pa.array([a.shape[1] for a in arrays], pa.int32()),
        "height": pa.array([a.shape[0] for a in arrays], pa.int32()),
        "channels": pa.array([channels(a) for a in arrays], pa.int8()),
        "pixel_hash": pa.array([pixel_hash(a) for a in arrays], pa.string()),
    }
    return set_columns(batch, cols)


def set_columns(table: pa.Table, cols: dict[str, pa.Array]) -> pa.Table:
    """Replace (or append) whole columns by name."""
    for name, arr in cols.items():
        if name in table.column_names:
            table = table.set_column(table.column_names.index(name), name, arr)
        else:
            table = table.append_column(name, arr)
    return table


def settings_digest(settings: dict, n: int = 12) -> str:
    return hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:n]


# --------------------------------------------------------------------------- CLI edge


def cli_run(stage: Stage, in_path: str | Path, out_path: str | Path, cfg: RunConfig) -> StageReport:
    """What every stage command does: a rich progress bar, the run, a summary; clear errors.

    Errors the user can fix (bad manifest, missing checkpoint, bad option) print one message and
    exit with code 2 instead of a traceback.
    """
    import typer
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress as Bar, TaskProgressColumn
    from rich.progress import TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from features.device import DeviceError
    from features.hub import WeightsNotFound
    from features.manifest import OutputError, check_writable
    from features.weights import WeightsError

    console = Console(stderr=True)
    try:
        open_manifest(in_path)  # a bad input is reported before a progress bar appears
        check_writable(shard_path(out_path, cfg.shard))  # ... and an unwritable output too
        resolve_device(cfg.device)
        with Bar(TextColumn(f"[bold]{stage.name}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                 TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                 console=console, transient=False) as bar:
            task = bar.add_task(stage.name, total=None, rate="")
            t0 = time.perf_counter()

            def update(done: int, total: int) -> None:
                dt = time.perf_counter() - t0
                bar.update(task, completed=done, total=total, rate=f"{done / dt:.1f} img/s" if dt > 0 else "")

            report = run_stage(stage, in_path, out_path, cfg, progress=update)
    except (ManifestError, StageError, WeightsNotFound, DeviceError, WeightsError, OutputError) as e:
        # typer.echo, not rich: a path in the message must not be wrapped across lines
        typer.echo(f"pipeline {stage.name}: {e}", err=True)
        raise typer.Exit(2) from None
    table = Table(title=f"pipeline {stage.name}", show_header=False)
    for k in ("rows_in", "rows_out", "rejected", "reused", "batches", "computed_rows", "remote_rows", "seconds",
              "images_per_s",
              "out_path", "rejects_path"):
        v = getattr(report, k)
        table.add_row(k, f"{v:.2f}" if isinstance(v, float) else str(v))
    console.print(table)
    if report.rejected:
        console.print(f"[yellow]{report.rejected} rows rejected: reasons in {report.rejects_path}")
    return report


def make_config(batch_size: int = 32, shard: str | None = None, work_dir: Path | None = None,
                device: str = "auto", clean: bool = False, executor: str = "local",
                ray_address: str | None = None, concurrency: int = 2,
                num_gpus_per_worker: float = 0.0) -> RunConfig:
    """RunConfig from the options every stage command shares; a bad --shard is a Typer usage error."""
    import typer

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
