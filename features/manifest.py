"""Read and write manifests: schema-checked on read, atomic on write."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.parquet as pq

from features.labels import LabelSet
from features.schema import (
    ALL_COLUMNS,
    CORE,
    META_FEATURES,
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


class OutputError(OSError):
    """An output that cannot be written (unwritable folder, full disk, --out that is a folder)."""


# A temp file is ".<name>.<pid>-<random>.tmp" beside its target: the writer's pid tells a later
# run whether the writer is dead (its file is swept) or alive (never touched).
_TMP_RE = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[A-Za-z0-9_]+\.tmp$")
# Temp files written before the pid was part of the name: swept once they are an hour old.
_LEGACY_TMP_RE = re.compile(r"^\.(?P<name>.+)\.[A-Za-z0-9_]{8}\.tmp$")
_LEGACY_AGE_S = 3600


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def sweep_stale_tmp(directory: str | Path, name: str | None = None) -> list[Path]:
    """Delete the temp files of dead writers in `directory` (only those for `name` if given).

    A writer killed mid-write (SIGKILL, power loss) cannot clean up after itself; the next run
    that writes into the same folder does. A live writer's file (its pid still runs) is kept.
    Returns the removed paths."""
    d = Path(directory)
    if not d.is_dir():
        return []
    removed = []
    now = time.time()
    for f in d.glob(f".{glob.escape(name) if name else '*'}.*.tmp"):
        m = _TMP_RE.match(f.name)
        try:
            if m is not None:
                if (name is not None and m["name"] != name) or _pid_alive(int(m["pid"])):
                    continue
            else:
                m = _LEGACY_TMP_RE.match(f.name)
                if m is None or (name is not None and m["name"] != name):
                    continue
                if now - f.stat().st_mtime < _LEGACY_AGE_S:
                    continue
            f.unlink()
            removed.append(f)
        except FileNotFoundError:  # another sweeper got there first
            continue
    return removed


def _tmp_for(path: Path) -> str:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}-", suffix=".tmp", dir=path.parent)
    os.close(fd)
    _usual_mode(tmp)
    return tmp


def _usual_mode(path: str) -> None:
    """mkstemp makes a file 0600, and so do writers that create their own (safetensors): an output
    gets the usual permissions, the umask applied, so a collaborator can read the weights too."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _output_error(path: Path, e: OSError) -> OutputError:
    if isinstance(e, OutputError):
        return e
    why = e.strerror or str(e)
    return OutputError(e.errno, f"cannot write {path}: {why}; free space or choose another output path")


def check_writable(path: str | Path, what: str = "--out") -> Path:
    """Refuse an output that cannot be written before any work is done.

    `path` is the file a command will write: a folder there, or a parent folder that cannot be
    created or written, raises OutputError naming it."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(21, f"{what} {path} is a folder; give the path of the file to write")
    blocking = next((d for d in path.parents if d.exists() and not d.is_dir()), None)
    if blocking is not None:  # e.g. a run folder given as the path of an existing file
        raise OutputError(20, f"{what} {path}: {blocking} is a file, not a folder; choose another path")
    created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp_for(path)
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(e.errno, f"{what} {path}: cannot write in {path.parent} ({e.strerror or e}); "
                          "choose a writable location") from None
    finally:
        for d in created:  # the check leaves no empty folder behind; the writer makes its own
            try:
                d.rmdir()
            except OSError:
                break
    return path


def check_replaceable(path: str | Path, what: str = "--out", inputs: Iterable[str | Path] = ()) -> Path:
    """`check_writable`, and two refusals (OutputError) for a Parquet output of a stage:

    - `path` is one of `inputs`: the input would be rewritten while it is read, and lost;
    - `path` exists and is not a Parquet file affectlab wrote (a manifest, a feature file or a
      shard): a mistyped `--out` must not replace a user's file. Re-running a stage over its own
      output stays allowed."""
    path = check_writable(path, what)
    for src in inputs:
        if path.exists() and Path(src).exists() and os.path.samefile(path, src):
            raise OutputError(f"{what} {path} is also the input; write to another file (the input would be "
                              "lost)")
    if path.exists():
        try:
            meta = pq.read_schema(path).metadata or {}
        except (pa.ArrowInvalid, OSError):
            meta = {}
        if not any(k.startswith(b"affectlab.") for k in meta):
            raise OutputError(f"{what} {path} exists and is not a manifest or feature file affectlab wrote; "
                              "choose another path, or remove that file first")
    return path


def atomic_write_bytes(path: str | Path, write) -> Path:
    """Call write(tmp_path) then rename onto `path`: readers never see a half-written file.

    Stale temp files of dead writers of the same name are swept first. OSError (unwritable
    folder, full disk, a folder at `path`) becomes OutputError naming `path`."""
    return atomic_write_many([(path, write)])[0]


def atomic_write_many(items: list[tuple[str | Path, Any]]) -> list[Path]:
    """Write every (path, write) to its temp file first, then rename them all.

    Nothing is renamed unless every write succeeded, so a failure leaves the old files as they
    were; only a kill between two renames can leave a mix, which readers of a set detect by
    its stamp (see `check_same_set`)."""
    done: list[tuple[str, Path]] = []
    current = Path(items[0][0])
    try:
        for path, write in items:
            path = current = Path(path)
            if path.is_dir():
                raise OutputError(21, f"cannot write {path}: it is a folder; give the path of a file")
            path.parent.mkdir(parents=True, exist_ok=True)
            sweep_stale_tmp(path.parent, path.name)
            tmp = _tmp_for(path)
            done.append((tmp, path))
            write(tmp)
            _usual_mode(tmp)  # the writer may have made the file anew, 0600
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        for tmp, path in done:
            os.replace(tmp, path)
    except OSError as e:
        raise _output_error(current, e) from None
    finally:
        for tmp, _ in done:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [p for _, p in done]


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


def _checked_and_stamped(table: pa.Table, path, label_set: LabelSet, producer: dict | None,
                         extra: dict | None = None) -> pa.Table:
    """Schema and values checked (nothing is written otherwise), then the version, label set,
    producer (and `extra`) stamped into the Parquet metadata: what every manifest writer does."""
    check_schema(table.schema, str(path))
    check_values(table, label_set, f"{path} (not written)", remedy=_writer_remedy(producer))
    meta = dict(table.schema.metadata or {})
    meta[META_VERSION] = SCHEMA_VERSION.encode()
    meta[META_LABEL_SET] = label_set.to_json().encode()
    meta[META_PRODUCER] = json.dumps(producer or {}, sort_keys=True, default=str).encode()
    meta.update(extra or {})
    return table.replace_schema_metadata(meta)


def write_manifest(
    table: pa.Table,
    path: str | Path,
    label_set: LabelSet,
    producer: dict[str, Any] | None = None,
) -> Path:
    """Validate `table` against the schema, stamp version + label set, write atomically."""
    table = _checked_and_stamped(table, path, label_set, producer)
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
        raise ManifestError(f"{path}: not a readable Parquet file ({e}); a manifest is the Parquet file "
                            f"`pipeline ingest` or a stage writes: pass one, or if this was one, {REMEDY}") from None


def open_manifest(path: str | Path) -> tuple[pa.Schema, LabelSet]:
    """Check a manifest without loading its rows: returns its schema and label set."""
    path = Path(path)
    meta = read_meta(path)
    version = meta.get(META_VERSION)
    if version is None:
        if META_FEATURES in meta:
            raise ManifestError(
                f"{path}: a feature file from `pipeline embed` (vectors keyed by sample_id), not a manifest; "
                f"pass the manifest it was made from as the manifest and this file as --image-features or "
                f"--text-features (`pipeline balance`: --features)")
        if (path.parent / "PROVENANCE.md").is_file():  # e.g. wild_dev: a collection with rules of its own
            raise ManifestError(f"{path}: a photo collection with its own rules ({path.parent / 'PROVENANCE.md'}), "
                                "not a manifest: read them before any use; to score a model on it, `make "
                                "wild-folder` writes its photos as a labelled folder for `train predict`")
        raise ManifestError(f"{path}: no affectlab schema version in its metadata; {REMEDY}")
    if version.decode() != SCHEMA_VERSION:
        raise ManifestError(
            f"{path}: written with manifest schema v{version.decode()}, this affectlab reads "
            f"v{SCHEMA_VERSION}; {REMEDY}")
    schema = pq.read_schema(path)
    check_schema(schema, str(path))
    ls = LabelSet.from_json(meta[META_LABEL_SET])
    _check_file_values(path, ls)
    return schema, ls


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


# ---- values: the contract beyond types ---------------------------------------------------

_VALUE_COLUMNS = ["sample_id", "label", "label_id"]
_checked: dict[tuple[str, int, int], bool] = {}


def clear_value_cache() -> None:
    """Forget which files' values were checked (open_manifest re-checks each file it opens next).

    The cache is keyed by (path, mtime, size), so a file rewritten in place is re-checked anyway;
    this is for a long-lived process that wants a clean start, and for tests."""
    _checked.clear()


def _writer_remedy(producer: dict | None, reading: bool = False) -> str:
    """What to re-run: the command that wrote the file (from its producer metadata) when known."""
    cmd = (producer or {}).get("command") or (producer or {}).get("stage")
    if not cmd:
        return REMEDY
    if reading:
        return f"re-create it with `{cmd}` (this file was written by it or edited since)"
    return f"fix the input of `{cmd}` and run it again"


def _rows(mask, limit: int = 5) -> str:
    import pyarrow.compute as pc

    idx = pc.indices_nonzero(mask).to_pylist()
    more = f" (+{len(idx) - limit} more)" if len(idx) > limit else ""
    return ", ".join(map(str, idx[:limit])) + more


def check_values(table: pa.Table, ls: LabelSet, where: str, remedy: str = REMEDY,
                 null_counts: dict[str, int] | None = None, null_reader=None) -> None:
    """Raise ManifestError unless every row keeps the contract: `label_id` in 0..len(names)-1,
    `label == names[label_id]`, `sample_id` unique, required (non-nullable) columns without
    nulls. The message names the first bad rows (0-based row numbers) and what to re-run.

    Vectorised with pyarrow.compute: 13 ms on the 25,842-row fer_train manifest (2-core CPU). Columns absent from
    `table` are not checked; `null_counts` (from Parquet statistics) replaces reading them, and
    `null_reader(name)` reads a column only to name the rows once a null is known to be there."""
    import pyarrow.compute as pc

    names = set(table.column_names)
    nulls = dict(null_counts or {})
    for c in CORE:
        if not c.nullable and c.name in names and c.name not in nulls:
            nulls[c.name] = table.column(c.name).null_count
    bad = sorted(k for k, v in nulls.items() if v)
    if bad:
        col = table.column(bad[0]) if bad[0] in names else (null_reader(bad[0]) if null_reader else None)
        first = f" at rows {_rows(pc.is_null(col))}" if col is not None else ""
        raise ManifestError(f"{where}: required column(s) {bad} hold nulls{first}; {remedy}")
    n = len(ls.names)
    if "label_id" in names:
        ids = table.column("label_id")
        out = pc.or_(pc.less(ids, 0), pc.greater_equal(ids, n))
        if pc.any(out).as_py():
            raise ManifestError(
                f"{where}: label_id outside 0..{n - 1} (label set {ls.name!r} has {n} classes) at rows "
                f"{_rows(out)}; {remedy}")
        if "label" in names:
            expect = pc.take(pa.array(ls.names, pa.string()), ids)
            wrong = pc.not_equal(table.column("label"), expect)
            if pc.any(wrong).as_py():
                i = pc.indices_nonzero(wrong)[0].as_py()
                raise ManifestError(
                    f"{where}: label does not match label_id at rows {_rows(wrong)} (row {i}: label "
                    f"{table.column('label')[i].as_py()!r}, label_id {ids[i].as_py()} is "
                    f"{ls.names[ids[i].as_py()]!r} in {ls.name!r}); {remedy}")
    elif "label" in names:
        wrong = pc.invert(pc.is_in(table.column("label"), value_set=pa.array(ls.names, pa.string())))
        if pc.any(wrong).as_py():
            raise ManifestError(f"{where}: label not in label set {ls.name!r} at rows {_rows(wrong)}; {remedy}")
    if "sample_id" in names:
        sid = table.column("sample_id")
        if pc.count_distinct(sid).as_py() != len(sid):
            vc = pc.value_counts(sid)
            dup = vc.field("values").filter(pc.greater(vc.field("counts"), 1))
            rows = _rows(pc.is_in(sid, value_set=dup))
            raise ManifestError(f"{where}: {len(dup)} sample_id(s) repeated, e.g. {dup[0].as_py()!r} "
                                f"(rows {rows}); {remedy}")


def _check_file_values(path: Path, ls: LabelSet) -> None:
    """check_values on a file: reads only sample_id/label/label_id; nulls from the Parquet
    statistics (no image bytes are read). Cached per (path, mtime, size)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key in _checked:
        return
    pf = pq.ParquetFile(path)
    md = pf.metadata
    required = {c.name for c in CORE if not c.nullable}
    nulls: dict[str, int] = {}
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        for j in range(rg.num_columns):
            col = rg.column(j)
            name = col.path_in_schema
            if name in required and name not in _VALUE_COLUMNS:
                st_ = col.statistics
                if st_ is None or not st_.has_null_count:
                    nulls[name] = nulls.get(name, 0) + pf.read_row_group(g, columns=[name]).column(0).null_count
                else:
                    nulls[name] = nulls.get(name, 0) + st_.null_count
    table = pf.read(columns=_VALUE_COLUMNS)
    prod = json.loads((md.metadata or {}).get(META_PRODUCER, b"{}") or b"{}")
    check_values(table, ls, str(path), remedy=_writer_remedy(prod, reading=True), null_counts=nulls,
                 null_reader=lambda name: pf.read(columns=[name]).column(0))
    if len(_checked) > 256:
        _checked.clear()
    _checked[key] = True


# ---- sets: files written together (ingest's train/val/test) ----------------------------

META_SET = b"affectlab.set"  # JSON: {"run": <id shared by the set>, "files": [file names of the set]}


def write_manifest_set(items: list[tuple[pa.Table, str | Path, LabelSet, dict]]) -> list[Path]:
    """Write several manifests as one set: one run id stamped in each file's metadata, every file
    written to its temp name before any is renamed. A reader that takes several of them checks
    the stamps with `check_same_set`."""
    import uuid

    stamp = json.dumps({"run": uuid.uuid4().hex, "files": sorted(Path(p).name for _, p, _, _ in items)})
    writes = []
    for table, path, ls, producer in items:
        t = _checked_and_stamped(table, path, ls, producer, {META_SET: stamp.encode()})
        writes.append((path, lambda tmp, t=t: pq.write_table(t, tmp, compression="zstd", row_group_size=2048)))
    return atomic_write_many(writes)


def set_stamp(path: str | Path) -> dict | None:
    raw = read_meta(path).get(META_SET)
    return json.loads(raw) if raw else None


def check_same_set(paths: Iterable[str | Path | None]) -> None:
    """Refuse files that belong to one set (by name) but come from different runs: a re-ingest
    killed between its renames, or one split copied in from elsewhere."""
    stamped = [(Path(p), set_stamp(p)) for p in paths if p is not None and Path(p).exists()]
    stamped = [(p, s) for p, s in stamped if s]
    for i, (a, sa) in enumerate(stamped):
        for b, sb in stamped[i + 1:]:
            if b.name in sa["files"] and a.name in sb["files"] and sa["run"] != sb["run"]:
                raise ManifestError(
                    f"{a} and {b} come from different `pipeline ingest` runs (an ingest was stopped "
                    f"between writing its files, or one was replaced); run the same `pipeline ingest` "
                    "again to rewrite the whole set")


def producer_of(path: str | Path) -> dict[str, Any]:
    return json.loads(read_meta(path).get(META_PRODUCER, b"{}"))


def file_sha256(path: str | Path, limit: int | None = None) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:limit] if limit else h.hexdigest()
