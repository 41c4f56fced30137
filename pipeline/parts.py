"""Part planning and part I/O: what both executors (local and Ray) agree on.

A run cuts the input into deterministic batches (`plan_batches`), names each batch's output by
content (`batch_key`) and keeps it as one Parquet *part* under `<work_dir>/<stage>/<key>.parquet`
(`write_part` / `read_part`). pipeline/runner.py (the local executor) and
pipeline/ray_executor.py both import this module, so the two compute the same keys and write
the same parts, and neither imports the other's internals:

* **Content-addressed**: the key hashes the stage name, its settings (model, checkpoint sha256,
  parameters) and the batch's input content. Change a setting or an input row and the key
  changes, so nothing stale is ever reused.
* **Resumable**: parts are written atomically (temporary file, then rename), so a run killed
  even by SIGKILL leaves only whole parts; a re-run finds them.
* **Deterministic**: batches are planned from rows sorted by sample_id, grouped by image shape.
* **Sharded**: `shard=(i, N)` keeps the rows whose stable hash(sample_id) % N == i (0-based).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from features.device import resolve_device
from features.manifest import ManifestError, atomic_write_bytes, to_table
from features.schema import CORE
from pipeline.stage import Stage, StageError

# Bump when the part-file layout or the key recipe changes: old parts then never match.
PART_FORMAT = "1"
META_REJECTS = b"affectlab.rejects"


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
    # pass finds every part done and only combines them (so both give the same rows).
    executor: str = "local"
    ray: RayConfig = RayConfig()


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


def out_path_base(out_path: Path) -> Path:
    """The un-sharded output path (so every shard of one job shares one work dir by default)."""
    m = re.fullmatch(r"(.*)\.shard-\d+-of-\d+(\.[^.]*)?", out_path.name)
    return out_path.with_name(m.group(1) + (m.group(2) or "")) if m else out_path


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


def part_path(stage_dir: Path, key: str) -> Path:
    """Where the part with this key lives."""
    return Path(stage_dir) / f"{key}.parquet"


# --------------------------------------------------------------------------- part I/O


def is_manifest(table: pa.Table | pa.Schema) -> bool:
    """True when every core manifest column is there (else the table is a feature file)."""
    names = table.names if isinstance(table, pa.Schema) else table.column_names
    return all(c.name in names for c in CORE)


def write_part(path: Path, table: pa.Table, rejects: list[dict]) -> None:
    """Atomic Parquet write of one part, its rejects in the file metadata."""
    meta = dict(table.schema.metadata or {})
    meta[META_REJECTS] = json.dumps(rejects, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def read_part(path: Path) -> tuple[pa.Table, list[dict]] | None:
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


def normalise(stage: Stage, out: pa.Table, in_groups: list[str]) -> pa.Table:
    """Manifest rows -> exactly the schema of input groups + the stage's groups."""
    if not stage.groups and not is_manifest(out):
        if "sample_id" not in out.column_names:
            raise StageError(f"stage {stage.name!r} returned a table without a sample_id column")
        return out
    try:
        return to_table(out, groups=tuple(dict.fromkeys([*in_groups, *stage.groups])))
    except (ManifestError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise StageError(f"stage {stage.name!r} returned rows that do not fit the manifest schema: {e}") from None


def bind_device(stage: Stage, device: str) -> None:
    """Set a stage's `device` attribute (when it has one) from a --device value, before setup()."""
    if hasattr(stage, "device"):
        stage.device = resolve_device(device)
