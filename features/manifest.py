"""Read and write manifests: schema-checked on read, atomic on write."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from features.labels import LabelSet
from features.schema import (
    ALL_COLUMNS,
    CORE,
    META_LABEL_SET,
    META_PRODUCER,
    META_VERSION,
    SCHEMA_VERSION,
    groups_of,
    schema_for,
)


class ManifestError(ValueError):
    """A manifest that cannot be used as it is; the message says what to run."""


REMEDY = "re-create it with `pipeline ingest ...` (or the stage that wrote it) from this affectlab version"


def sample_id(dataset: str, source_path: str, frame: int | None = None) -> str:
    key = f"{dataset}\0{source_path}\0{'' if frame is None else frame}"
    return f"{dataset}-{hashlib.sha1(key.encode()).hexdigest()[:16]}"


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Call write(tmp_path) then rename onto `path`: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    # mkstemp makes the file 0600; a manifest should get the usual permissions (umask applies)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def to_table(rows: list[dict[str, Any]] | pa.Table, groups: Iterable[str] = ()) -> pa.Table:
    """Rows (dicts) -> a table in the manifest schema. Missing nullable columns become nulls."""
    schema = schema_for(tuple(groups))
    if isinstance(rows, pa.Table):
        cols = []
        for f in schema:
            if f.name in rows.column_names:
                cols.append(rows.column(f.name).cast(f.type))
            elif f.nullable:
                cols.append(pa.nulls(rows.num_rows, f.type))
            else:
                raise ManifestError(f"required column {f.name!r} missing")
        return pa.Table.from_arrays(cols, schema=schema)
    defaults = {"synthetic": False, "leak": False}
    data = {f.name: [r.get(f.name, defaults.get(f.name)) for r in rows] for f in schema}
    return pa.Table.from_pydict(data, schema=schema)


def write_manifest(
    table: pa.Table,
    path: str | Path,
    label_set: LabelSet,
    producer: dict[str, Any] | None = None,
) -> Path:
    """Validate `table` against the schema, stamp version + label set, write atomically."""
    check_schema(table.schema, str(path))
    meta = dict(table.schema.metadata or {})
    meta[META_VERSION] = SCHEMA_VERSION.encode()
    meta[META_LABEL_SET] = label_set.to_json().encode()
    meta[META_PRODUCER] = json.dumps(producer or {}, sort_keys=True, default=str).encode()
    table = table.replace_schema_metadata(meta)
    # row groups of ~2k rows: DuckDB and the trainer can read slices without the whole file
    return atomic_write_bytes(
        path, lambda tmp: pq.write_table(table, tmp, compression="zstd", row_group_size=2048)
    )


def check_schema(schema: pa.Schema, where: str = "manifest") -> None:
    names = set(schema.names)
    missing = [c.name for c in CORE if c.name not in names]
    if missing:
        raise ManifestError(f"{where}: not an affectlab manifest (missing columns {missing}); {REMEDY}")
    for f in schema:
        col = ALL_COLUMNS.get(f.name)
        if col is not None and not f.type.equals(col.type):
            raise ManifestError(
                f"{where}: column {f.name!r} has type {f.type}, the schema says {col.type}; {REMEDY}")


def read_meta(path: str | Path) -> dict[bytes, bytes]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist; create it with `pipeline ingest ...`")
    try:
        return pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError(f"{path}: not a readable Parquet file ({e}); {REMEDY}") from None


def open_manifest(path: str | Path) -> tuple[pa.Schema, LabelSet]:
    """Check a manifest without loading its rows: returns its schema and label set."""
    path = Path(path)
    meta = read_meta(path)
    version = meta.get(META_VERSION)
    if version is None:
        raise ManifestError(f"{path}: no affectlab schema version in its metadata; {REMEDY}")
    if version.decode() != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: written with manifest schema v{version.decode()}, this affectlab reads "
            f"v{SCHEMA_VERSION}; {REMEDY}")
    schema = pq.read_schema(path)
    check_schema(schema, str(path))
    return schema, LabelSet.from_json(meta[META_LABEL_SET])


def read_manifest(path: str | Path, columns: list[str] | None = None) -> tuple[pa.Table, LabelSet]:
    schema, ls = open_manifest(path)
    if columns is not None:
        absent = [c for c in columns if c not in schema.names]
        if absent:
            have = groups_of(schema)
            raise ManifestError(
                f"{path}: lacks columns {absent} (it carries groups {have or 'none'}); run the stage "
                "that adds them (e.g. `pipeline caption` for caption, `pipeline faces` for face_box)")
    return pq.read_table(path, columns=columns), ls


def producer_of(path: str | Path) -> dict[str, Any]:
    return json.loads(read_meta(path).get(META_PRODUCER, b"{}"))


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
