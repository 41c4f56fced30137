"""features/manifest.py, value by value: the exact messages, null counts, cache keys, stamps and
file layout that the contract promises (test_features.py covers the round trips, test_faults.py
the commands).

Oracles: hashlib for ids and digests, pyarrow's own Parquet metadata for the layout, and
messages written out in full from the docstrings and the schema."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import manifest
from features.labels import LabelSet, get_label_set
from features.manifest import REMEDY, ManifestError, OutputError
from features.schema import CORE, META_LABEL_SET, META_PRODUCER, META_VERSION, SCHEMA_VERSION, schema_for

FER = get_label_set("fer2013")


def _rows(n: int) -> list[dict]:
    """n valid rows; the image bytes are never decoded by the contract checks, so a stub will do."""
    return [dict(sample_id=f"t-{i:05d}", dataset="t", split="train", source_path=f"img{i}.png",
                 label=FER.names[i % 7], label_id=i % 7, label_set="fer2013", image=b"\x89PNG-stub",
                 image_format="png", width=8, height=8, channels=1, pixel_hash=f"{i:040x}")
            for i in range(n)]


def _raw(path: Path, rows: list[dict], *, producer=None, stats: bool = True, row_group_size: int | None = None,
         **write_kw) -> Path:
    """A manifest written straight with pyarrow, past the writer's checks: nulls and bad values land
    in the file as they would from another tool or an edit. The required columns are declared
    nullable (Parquet refuses nulls otherwise); check_schema compares types only."""
    t = manifest.to_table(rows)
    m = {META_VERSION: SCHEMA_VERSION.encode(), META_LABEL_SET: FER.to_json().encode()}
    if producer is not None:
        m[META_PRODUCER] = producer if isinstance(producer, bytes) else json.dumps(producer).encode()
    schema = pa.schema([f.with_nullable(True) for f in t.schema], metadata=m)
    pq.write_table(pa.Table.from_arrays(t.columns, schema=schema), path, write_statistics=stats,
                   row_group_size=row_group_size, **write_kw)
    return path


def _message(exc_info) -> str:
    return str(exc_info.value)


# ----------------------------------------------------------------------------- ids and tables


def test_sample_id_is_dataset_and_16_hex_of_the_documented_sha1():
    # schema.py: "'<dataset>-' + 16 hex of sha1(dataset, source_path, frame)", NUL-separated, no frame -> ''
    assert manifest.sample_id("fer2013", "a/b.png") == \
        "fer2013-" + hashlib.sha1(b"fer2013\0a/b.png\0").hexdigest()[:16]
    assert manifest.sample_id("dfew", "clip.mp4", 0) == "dfew-" + hashlib.sha1(b"dfew\0clip.mp4\x000").hexdigest()[:16]
    assert len(manifest.sample_id("d", "x").split("-", 1)[1]) == 16


def test_to_table_fills_absent_nullable_columns_with_typed_nulls():
    full = manifest.to_table(_rows(3))
    required = [c.name for c in CORE if not c.nullable]
    t = manifest.to_table(full.select(required))
    assert t.schema.equals(schema_for(), check_metadata=False)
    for c in CORE:
        if c.nullable:
            assert t.column(c.name).type == c.type and t.column(c.name).null_count == 3, c.name
    assert t.column("sample_id").to_pylist() == ["t-00000", "t-00001", "t-00002"]


def test_to_table_names_a_missing_required_column():
    full = manifest.to_table(_rows(2))
    with pytest.raises(ManifestError) as e:
        manifest.to_table(full.drop_columns(["dataset"]))
    assert _message(e) == "required column 'dataset' missing"


def test_to_table_rows_default_synthetic_and_leak_to_false():
    t = manifest.to_table(_rows(3))
    assert t.column("synthetic").to_pylist() == [False] * 3
    assert t.column("leak").to_pylist() == [False] * 3
    rows = _rows(2)
    rows[1].update(synthetic=True, leak=True)
    t = manifest.to_table(rows)
    assert t.column("synthetic").to_pylist() == [False, True] and t.column("leak").to_pylist() == [False, True]


# ----------------------------------------------------------------------------- what a writer writes


def test_producer_is_stamped_as_sorted_json_with_paths_as_text(tmp_path):
    producer = {"stage": "ingest", "out": Path("m/x.parquet"), "a": 1}
    p = manifest.write_manifest(manifest.to_table(_rows(2)), tmp_path / "m.parquet", FER, producer)
    raw = pq.read_schema(p).metadata[META_PRODUCER]
    assert raw == b'{"a": 1, "out": "m/x.parquet", "stage": "ingest"}'
    assert manifest.producer_of(p) == {"a": 1, "out": "m/x.parquet", "stage": "ingest"}
    s, = manifest.write_manifest_set([(manifest.to_table(_rows(2)), tmp_path / "s.parquet", FER, producer)])
    assert pq.read_schema(s).metadata[META_PRODUCER] == raw
    assert manifest.set_stamp(s)["files"] == ["s.parquet"]


def test_a_file_without_producer_metadata_reads_as_no_producer(tmp_path):
    p = _raw(tmp_path / "m.parquet", _rows(3))
    assert META_PRODUCER not in pq.read_schema(p).metadata
    assert manifest.producer_of(p) == {}
    schema, ls = manifest.open_manifest(p)
    assert ls == FER and schema.names == schema_for().names
    q = _raw(tmp_path / "e.parquet", _rows(3), producer=b"")  # an empty value is no producer either
    assert manifest.open_manifest(q)[1] == FER


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_written_files_get_the_usual_permissions(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        p = manifest.write_manifest(manifest.to_table(_rows(2)), tmp_path / "m.parquet", FER)
        q = manifest.atomic_write_bytes(tmp_path / "b.bin", lambda tmp: Path(tmp).write_bytes(b"x"))
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == mode and q.stat().st_mode & 0o777 == mode


# ----------------------------------------------------------------------------- messages: schema


def test_check_schema_names_what_is_missing():
    with pytest.raises(ManifestError) as e:
        manifest.check_schema(pa.schema([("x", pa.int8())]))
    names = [c.name for c in CORE]
    assert _message(e) == f"manifest: not an affectlab manifest (missing columns {names}); {REMEDY}"
    with pytest.raises(ManifestError) as e:
        manifest.check_schema(schema_for().remove(0), "here")
    assert _message(e) == f"here: not an affectlab manifest (missing columns ['sample_id']); {REMEDY}"
    manifest.check_schema(schema_for(("caption",)))


def test_a_wrong_column_type_is_named_with_the_path(tmp_path):
    t = manifest.to_table(_rows(3))
    bad = t.set_column(t.schema.get_field_index("label_id"), "label_id", t.column("label_id").cast(pa.int32()))
    want = "column 'label_id' has type int32, the schema says int16; " + REMEDY
    path = tmp_path / "w.parquet"
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest(bad, path, FER)
    assert _message(e) == f"{path}: {want}" and not path.exists()
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest_set([(bad, path, FER, {})])
    assert _message(e) == f"{path}: {want}" and not path.exists()
    m = {META_VERSION: SCHEMA_VERSION.encode(), META_LABEL_SET: FER.to_json().encode()}
    pq.write_table(bad.replace_schema_metadata(m), path)
    with pytest.raises(ManifestError) as e:
        manifest.open_manifest(path)
    assert _message(e) == f"{path}: {want}"


# ----------------------------------------------------------------------------- messages: values


@pytest.mark.parametrize("producer, remedy", [
    (None, REMEDY),
    ({}, REMEDY),
    ({"command": "pipeline ingest --layout x"}, "fix the input of `pipeline ingest --layout x` and run it again"),
    ({"stage": "balance"}, "fix the input of `balance` and run it again"),
    ({"command": "pipeline faces", "stage": "faces"}, "fix the input of `pipeline faces` and run it again"),
    ({"command": "", "stage": "faces"}, "fix the input of `faces` and run it again"),
])
def test_a_writer_names_the_command_to_fix(tmp_path, producer, remedy):
    rows = _rows(7)
    rows[2]["label_id"] = 9
    path = tmp_path / "x.parquet"
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest(manifest.to_table(rows), path, FER, producer)
    assert _message(e) == (f"{path} (not written): label_id outside 0..6 (label set 'fer2013' has 7 classes) "
                           f"at rows 2; {remedy}")
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest_set([(manifest.to_table(rows), path, FER, producer)])
    assert _message(e).endswith(f"at rows 2; {remedy}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("producer, remedy", [
    (None, REMEDY),
    ({"command": "pipeline ingest fer2013"},
     "re-create it with `pipeline ingest fer2013` (this file was written by it or edited since)"),
    ({"stage": "caption", "model": "x"}, "re-create it with `caption` (this file was written by it or edited since)"),
])
def test_a_reader_names_the_command_that_wrote_the_file(tmp_path, producer, remedy):
    rows = _rows(7)
    rows[4]["label_id"] = -1
    p = _raw(tmp_path / "m.parquet", rows, producer=producer)
    with pytest.raises(ManifestError) as e:
        manifest.open_manifest(p)
    assert _message(e) == f"{p}: label_id outside 0..6 (label set 'fer2013' has 7 classes) at rows 4; {remedy}"


@pytest.mark.parametrize("bad, shown", [
    (5, "0, 1, 2, 3, 4"),
    (6, "0, 1, 2, 3, 4 (+1 more)"),
    (9, "0, 1, 2, 3, 4 (+4 more)"),
])
def test_messages_name_five_rows_and_count_the_rest(tmp_path, bad, shown):
    rows = _rows(12)
    for r in rows[:bad]:
        r["label_id"] = 7
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest(manifest.to_table(rows), tmp_path / "x.parquet", FER)
    assert f" at rows {shown}; " in _message(e)


def test_label_mismatch_names_the_first_row(tmp_path):
    rows = _rows(7)
    rows[3]["label"] = FER.names[0]
    rows[5]["label"] = FER.names[6]
    path = tmp_path / "x.parquet"
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest(manifest.to_table(rows), path, FER)
    assert _message(e) == (f"{path} (not written): label does not match label_id at rows 3, 5 (row 3: label "
                           f"{FER.names[0]!r}, label_id 3 is {FER.names[3]!r} in 'fer2013'); {REMEDY}")


def test_labels_without_ids_are_checked_against_the_label_set():
    t = pa.table({"sample_id": ["a", "b", "c", "d"], "label": ["angry", "nope", "happy", "Angry"]})
    with pytest.raises(ManifestError) as e:
        manifest.check_values(t, FER, "w")
    assert _message(e) == f"w: label not in label set 'fer2013' at rows 1, 3; {REMEDY}"
    manifest.check_values(t.slice(0, 1), FER, "w")
    manifest.check_values(pa.table({"label": [FER.names[i] for i in range(7)]}), FER, "w")
    with pytest.raises(ManifestError, match=r"label not in label set 'none' at rows 0; "):
        manifest.check_values(pa.table({"label": ["angry"]}), LabelSet("none", ()), "w")


def test_duplicate_sample_ids_are_counted_and_named():
    t = pa.table({"sample_id": ["a", "b", "a", "c", "b", "d"]})
    with pytest.raises(ManifestError) as e:
        manifest.check_values(t, FER, "w", remedy="do x")
    assert _message(e) == "w: 2 sample_id(s) repeated, e.g. 'a' (rows 0, 1, 2, 4); do x"


# ----------------------------------------------------------------------------- nulls in required columns


def test_a_writer_names_the_rows_of_a_null_required_column(tmp_path):
    rows = _rows(6)
    rows[1]["dataset"] = None
    rows[3]["dataset"] = None
    path = tmp_path / "x.parquet"
    with pytest.raises(ManifestError) as e:
        manifest.write_manifest(manifest.to_table(rows), path, FER)
    assert _message(e) == f"{path} (not written): required column(s) ['dataset'] hold nulls at rows 1, 3; {REMEDY}"
    rows[4]["split"] = None
    with pytest.raises(ManifestError) as e:
        manifest.check_values(manifest.to_table(rows), FER, "w")
    assert _message(e) == f"w: required column(s) ['dataset', 'split'] hold nulls at rows 1, 3; {REMEDY}"
    assert not path.exists()


def test_known_nulls_in_a_column_not_read_are_reported_without_rows():
    t = pa.table({"sample_id": ["a", "b"]})
    with pytest.raises(ManifestError) as e:
        manifest.check_values(t, FER, "w", null_counts={"image": 2, "split": 0})
    assert _message(e) == f"w: required column(s) ['image'] hold nulls; {REMEDY}"
    with pytest.raises(ManifestError) as e:
        manifest.check_values(t, FER, "w", null_counts={"image": 1},
                              null_reader=lambda name: pa.array([b"x", None, None], pa.binary()))
    assert _message(e) == f"w: required column(s) ['image'] hold nulls at rows 1, 2; {REMEDY}"
    manifest.check_values(t, FER, "w", null_counts={"image": 0, "split": 0})


# Nulls in a file are counted from each row group's Parquet statistics, or by reading that one
# column of that row group when a writer left the statistics out; either way the sum over every
# row group decides, and the rows are named.
@pytest.mark.parametrize("stats", [True, False], ids=["statistics", "no-statistics"])
@pytest.mark.parametrize("null_rows", [[1], [9], [1, 2, 9]], ids=["first-group", "last-group", "both"])
def test_nulls_in_a_file_are_summed_over_row_groups(tmp_path, stats, null_rows):
    rows = _rows(12)
    for i in null_rows:
        rows[i]["split"] = None
    p = _raw(tmp_path / "m.parquet", rows, stats=stats, row_group_size=4)
    md = pq.ParquetFile(p).metadata
    assert md.num_row_groups == 3
    j = md.schema.names.index("split")
    if stats:
        assert [md.row_group(g).column(j).statistics.null_count for g in range(3)] == \
            [sum(1 for i in null_rows if g * 4 <= i < g * 4 + 4) for g in range(3)]
    else:
        assert md.row_group(0).column(j).statistics is None
    with pytest.raises(ManifestError) as e:
        manifest.open_manifest(p)
    shown = ", ".join(map(str, null_rows))
    assert _message(e) == f"{p}: required column(s) ['split'] hold nulls at rows {shown}; {REMEDY}"


@pytest.mark.parametrize("stats", [True, False], ids=["statistics", "no-statistics"])
def test_a_file_without_nulls_opens_with_or_without_statistics(tmp_path, stats):
    p = _raw(tmp_path / "m.parquet", _rows(12), stats=stats, row_group_size=4)
    schema, ls = manifest.open_manifest(p)
    assert ls == FER and len(schema) == len(CORE)


def test_checking_a_file_reads_no_image_bytes(tmp_path, monkeypatch):
    """The docstring's promise: only sample_id/label/label_id are read, nulls come from statistics;
    a column with nulls is read alone, to name its rows."""
    asked: list = []
    read, read_group = pq.ParquetFile.read, pq.ParquetFile.read_row_group

    def spy_read(self, columns=None, **kw):
        asked.append(columns)
        return read(self, columns=columns, **kw)

    def spy_group(self, i, columns=None, **kw):
        asked.append(columns)
        return read_group(self, i, columns=columns, **kw)

    monkeypatch.setattr(pq.ParquetFile, "read", spy_read)
    monkeypatch.setattr(pq.ParquetFile, "read_row_group", spy_group)
    p = manifest.write_manifest(manifest.to_table(_rows(12)), tmp_path / "m.parquet", FER)
    manifest.open_manifest(p)
    assert asked and all(c is not None and set(c) <= {"sample_id", "label", "label_id"} for c in asked), asked
    rows = _rows(12)
    rows[5]["split"] = None
    asked.clear()
    with pytest.raises(ManifestError, match=r"\['split'\] hold nulls at rows 5;"):
        manifest.open_manifest(_raw(tmp_path / "n.parquet", rows, row_group_size=4))
    assert asked and all(c is not None and "image" not in c for c in asked), asked


# ----------------------------------------------------------------------------- the read cache


def _same_size_pair(tmp_path: Path) -> tuple[Path, Path]:
    """A good file and a bad one of the same size: the bad one has two label_ids swapped (plain
    encoding, no compression, so the bytes differ but not their number)."""
    plain = dict(compression="none", use_dictionary=False)
    rows = _rows(7)
    good = _raw(tmp_path / "good.parquet", rows, **plain)
    rows[0]["label_id"], rows[1]["label_id"] = rows[1]["label_id"], rows[0]["label_id"]
    bad = _raw(tmp_path / "bad.parquet", rows, **plain)
    assert good.stat().st_size == bad.stat().st_size
    return good, bad


def test_the_cache_is_per_file(tmp_path):
    good, bad = _same_size_pair(tmp_path)
    st = good.stat()
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))
    manifest.open_manifest(good)
    with pytest.raises(ManifestError, match="label does not match label_id at rows 0, 1"):
        manifest.open_manifest(bad)


def test_the_cache_forgets_a_file_that_changed(tmp_path):
    good, bad = _same_size_pair(tmp_path)
    target = tmp_path / "m.parquet"
    shutil.copy2(good, target)
    manifest.open_manifest(target)
    st = target.stat()
    # same size, new mtime
    shutil.copyfile(bad, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    with pytest.raises(ManifestError, match="label does not match"):
        manifest.open_manifest(target)
    # same mtime, new size
    shutil.copy2(good, target)
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    manifest.open_manifest(target)
    rows = _rows(9)
    rows[8]["label_id"] = 8
    _raw(target, rows)
    assert target.stat().st_size != st.st_size
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(ManifestError, match="label_id outside 0..6"):
        manifest.open_manifest(target)


def test_the_cache_holds_at_most_257_files_then_starts_over(tmp_path, monkeypatch):
    """Seen through its effect: a cached file's values are not checked again; the 258th file
    empties the cache, so the first file is checked again after it."""
    manifest.clear_value_cache()
    checked = []
    real = manifest.check_values
    monkeypatch.setattr(manifest, "check_values", lambda table, ls, where, *a, **k: (checked.append(where),
                                                                                      real(table, ls, where, *a, **k)))
    src = _raw(tmp_path / "m.parquet", _rows(2))
    paths = []
    for i in range(258):
        paths.append(tmp_path / f"c{i}.parquet")
        shutil.copyfile(src, paths[-1])
    for p in paths[:257]:
        manifest.open_manifest(p)
    assert checked == [str(p) for p in paths[:257]]
    manifest.open_manifest(paths[0])  # still cached: 257 files fit
    assert len(checked) == 257
    manifest.open_manifest(paths[257])  # the 258th: the cache starts over with it
    manifest.open_manifest(paths[0])
    assert checked[257:] == [str(paths[257]), str(paths[0])]


# ----------------------------------------------------------------------------- reading columns


def test_read_manifest_reads_only_the_columns_asked(tmp_path):
    p = manifest.write_manifest(manifest.to_table(_rows(3)), tmp_path / "m.parquet", FER)
    t, ls = manifest.read_manifest(p, columns=["label", "sample_id"])
    assert t.column_names == ["label", "sample_id"] and ls == FER
    assert t.column("label").to_pylist() == ["angry", FER.names[1], FER.names[2]]


def test_read_manifest_says_which_groups_a_file_carries(tmp_path):
    p = manifest.write_manifest(manifest.to_table(_rows(3)), tmp_path / "m.parquet", FER)
    tail = ("run the stage that adds them (e.g. `pipeline caption` for caption, `pipeline faces` for face_box)")
    with pytest.raises(ManifestError) as e:
        manifest.read_manifest(p, columns=["sample_id", "caption"])
    assert _message(e) == f"{p}: lacks columns ['caption'] (it carries groups none); {tail}"
    q = manifest.write_manifest(manifest.to_table(_rows(3), groups=("caption",)), tmp_path / "c.parquet", FER)
    with pytest.raises(ManifestError) as e:
        manifest.read_manifest(q, columns=["face_box", "caption", "face_score"])
    assert _message(e) == f"{q}: lacks columns ['face_box', 'face_score'] (it carries groups ['caption']); {tail}"


# ----------------------------------------------------------------------------- sets


def _set(folder: Path, *names: str) -> list[Path]:
    folder.mkdir()
    return manifest.write_manifest_set([(manifest.to_table(_rows(2)), folder / n, FER, {}) for n in names])


def test_check_same_set_skips_absent_files(tmp_path):
    a, b = _set(tmp_path / "s", "train.parquet", "val.parquet")
    manifest.check_same_set([a, None, tmp_path / "missing.parquet", b])


def test_check_same_set_compares_every_pair(tmp_path):
    # a and c belong together but come from different runs; b and d are another set, listed
    # between and after them: only the pair (first, third) shows the mix
    a, _ = _set(tmp_path / "r1", "a.parquet", "c.parquet")
    _, c = _set(tmp_path / "r2", "a.parquet", "c.parquet")
    b, d = _set(tmp_path / "r3", "b.parquet", "d.parquet")
    with pytest.raises(ManifestError) as e:
        manifest.check_same_set([a, b, c, d])
    assert _message(e) == (f"{a} and {c} come from different `pipeline ingest` runs (an ingest was stopped "
                           "between writing its files, or one was replaced); run the same `pipeline ingest` "
                           "again to rewrite the whole set")
    manifest.check_same_set([b, a, d])


# ----------------------------------------------------------------------------- outputs


def test_check_writable_refuses_a_folder_with_eisdir(tmp_path):
    with pytest.raises(OutputError) as e:
        manifest.check_writable(tmp_path)
    assert e.value.errno == errno.EISDIR
    assert e.value.strerror == f"--out {tmp_path} is a folder; give the path of the file to write"
    with pytest.raises(OutputError) as e:
        manifest.check_writable(tmp_path, "--report")
    assert e.value.strerror == f"--report {tmp_path} is a folder; give the path of the file to write"


def test_check_writable_accepts_missing_folders_and_leaves_none(tmp_path):
    out = tmp_path / "a" / "b" / "c" / "o.parquet"
    assert manifest.check_writable(out) == out
    assert list(tmp_path.iterdir()) == []


def test_check_writable_names_the_folder_it_cannot_write_in(tmp_path):
    (tmp_path / "f").write_text("a file, not a folder")
    out = tmp_path / "f" / "o.parquet"
    with pytest.raises(OutputError) as e:
        manifest.check_writable(out)
    assert e.value.errno == errno.ENOTDIR  # the file in the way is named, not a bare "File exists"
    assert e.value.strerror == f"--out {out}: {out.parent} is a file, not a folder; choose another path"


def test_atomic_write_refuses_a_folder_with_eisdir(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(OutputError) as e:
        manifest.atomic_write_bytes(tmp_path / "d", lambda tmp: None)
    assert e.value.errno == errno.EISDIR
    assert e.value.strerror == f"cannot write {tmp_path / 'd'}: it is a folder; give the path of a file"


@pytest.mark.parametrize("error, why", [
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device"),
    (OSError("the disk went away"), "the disk went away"),
])
def test_a_failed_write_names_the_output_and_keeps_errno(tmp_path, error, why):
    def write(tmp):
        Path(tmp).write_bytes(b"half")
        raise error

    with pytest.raises(OutputError) as e:
        manifest.atomic_write_bytes(tmp_path / "o.bin", write)
    assert e.value.errno == error.errno
    assert e.value.strerror == f"cannot write {tmp_path / 'o.bin'}: {why}; free space or choose another output path"
    assert list(tmp_path.iterdir()) == []


def _dead_pid() -> int:
    r = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(r.stdout)


def test_a_write_sweeps_only_its_own_dead_temps(tmp_path):
    pid = _dead_pid()
    mine = tmp_path / f".m.parquet.{pid}-abcdefgh.tmp"
    other = tmp_path / f".n.parquet.{pid}-abcdefgh.tmp"
    mine.write_bytes(b"dead")
    other.write_bytes(b"dead")
    manifest.atomic_write_bytes(tmp_path / "m.parquet", lambda tmp: Path(tmp).write_bytes(b"x"))
    assert not mine.exists() and other.exists()


# ----------------------------------------------------------------------------- sweeping temp files


# The child reports any signal that reaches it (even one its parent ignores, such as SIGHUP under nohup).
_LISTEN = """
import os, signal, time
def got(n, frame):
    os._exit(100 + n)
for s in signal.valid_signals():
    try:
        signal.signal(s, got)
    except (OSError, ValueError, RuntimeError):
        pass
print("ready", flush=True)
time.sleep(30)
"""


def test_a_live_writer_in_another_process_is_sent_no_signal(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", _LISTEN], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "ready\n"
        live = tmp_path / f".m.parquet.{child.pid}-abcdefgh.tmp"
        live.write_bytes(b"in progress")
        assert manifest.sweep_stale_tmp(tmp_path) == []
        assert live.exists()
        with pytest.raises(subprocess.TimeoutExpired):  # a probe only (signal 0): nothing was delivered
            child.wait(timeout=0.3)
    finally:
        child.kill()
        child.wait()


def test_a_writer_owned_by_someone_else_counts_as_alive(tmp_path, monkeypatch):
    def kill(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    f = tmp_path / ".m.parquet.4242-abcdefgh.tmp"
    f.write_bytes(b"x")
    monkeypatch.setattr(manifest.os, "kill", kill)
    assert manifest.sweep_stale_tmp(tmp_path) == []
    assert f.exists()


def _age(f: Path, seconds: float, now: float | None = None) -> Path:
    t = (time.time() if now is None else now) - seconds
    os.utime(f, (t, t))
    return f


def test_legacy_temps_are_swept_after_an_hour(tmp_path):
    old = tmp_path / ".m.parquet.abcdefgh.tmp"
    young = tmp_path / ".m.parquet.ABCDEFGH.tmp"
    other = tmp_path / ".n.parquet.abcdefgh.tmp"
    odd = tmp_path / ".m.parquet.abc.tmp"  # neither pattern: not ours
    for f in (old, young, other, odd):
        f.write_bytes(b"x")
    _age(old, 2 * 3600)
    _age(other, 2 * 3600)
    _age(odd, 2 * 3600)
    assert manifest.sweep_stale_tmp(tmp_path, "m.parquet") == [old]
    assert young.exists() and other.exists() and odd.exists()
    assert manifest.sweep_stale_tmp(tmp_path) == [other]
    assert young.exists() and odd.exists()


def test_a_legacy_temp_exactly_an_hour_old_is_swept(tmp_path, monkeypatch):
    now = 2_000_000_000.0
    monkeypatch.setattr(manifest, "time", types.SimpleNamespace(time=lambda: now))
    f = tmp_path / ".m.parquet.abcdefgh.tmp"
    g = tmp_path / ".m.parquet.ABCDEFGH.tmp"
    f.write_bytes(b"x")
    g.write_bytes(b"x")
    _age(f, 3600, now)
    _age(g, 3599, now)
    assert manifest.sweep_stale_tmp(tmp_path, "m.parquet") == [f]
    assert g.exists()


def test_files_kept_do_not_stop_the_sweep(tmp_path):
    pid = _dead_pid()
    keep, gone = [], []
    for i in range(10):
        keep.append(tmp_path / f".m{i}.parquet.ABCDEF{i:02d}.tmp")  # young legacy
        keep.append(tmp_path / f".k{i}.parquet.abc.tmp")  # neither pattern
        gone.append(tmp_path / f".d{i}.parquet.{pid}-abcdefgh.tmp")  # dead writer
        gone.append(tmp_path / f".o{i}.parquet.abcdef{i:02d}.tmp")  # old legacy
    for f in keep + gone:
        f.write_bytes(b"x")
    for f in keep[1::2] + gone[1::2]:
        _age(f, 2 * 3600)
    assert sorted(manifest.sweep_stale_tmp(tmp_path)) == sorted(gone)
    assert all(f.exists() for f in keep)


def test_a_temp_another_sweeper_removed_first_is_skipped(tmp_path, monkeypatch):
    pid = _dead_pid()
    files = [tmp_path / f".m{i}.parquet.{pid}-abcdefgh.tmp" for i in range(4)]
    for f in files:
        f.write_bytes(b"x")
    unlink = Path.unlink
    raced: list[Path] = []

    def racing_unlink(self, missing_ok=False):
        unlink(self)
        if not raced:  # the other sweeper deletes the first one just before us
            raced.append(self)
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self))

    monkeypatch.setattr(Path, "unlink", racing_unlink)
    removed = manifest.sweep_stale_tmp(tmp_path)
    assert sorted(removed + raced) == sorted(files) and raced[0] not in removed
    assert not any(f.exists() for f in files)


# ----------------------------------------------------------------------------- digests


def test_file_sha256_is_hashlibs_over_the_whole_file(tmp_path):
    data = random.Random(0).randbytes(3 * (1 << 20) + 17)  # more than one 1 MiB chunk, and a partial one
    p = tmp_path / "w.bin"
    p.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert manifest.file_sha256(p) == full
    assert manifest.file_sha256(p, 12) == full[:12]
    assert manifest.file_sha256(p, 0) == full  # 0 means no limit, like None
    (tmp_path / "e.bin").write_bytes(b"")
    assert manifest.file_sha256(tmp_path / "e.bin") == hashlib.sha256(b"").hexdigest()


# ----------------------------------------------------------------------------- file layout (the slowest, last)


def _layout(path: Path) -> tuple[list[int], set[str]]:
    md = pq.ParquetFile(path).metadata
    sizes = [md.row_group(g).num_rows for g in range(md.num_row_groups)]
    codecs = {md.row_group(g).column(j).compression for g in range(md.num_row_groups)
              for j in range(md.num_columns)}
    return sizes, codecs


def test_writers_use_zstd_row_groups_of_2048_rows(tmp_path):
    # 2048-row groups let DuckDB and the trainer read slices; 5000 rows = 2048 + 2048 + 904
    t = manifest.to_table(_rows(5000))
    p = manifest.write_manifest(t, tmp_path / "m.parquet", FER)
    assert _layout(p) == ([2048, 2048, 904], {"ZSTD"})
    a, b = manifest.write_manifest_set([(t, tmp_path / "a.parquet", FER, {}), (t.slice(0, 10), tmp_path / "b.parquet",
                                                                              FER, {})])
    assert _layout(a) == ([2048, 2048, 904], {"ZSTD"}) and _layout(b) == ([10], {"ZSTD"})
