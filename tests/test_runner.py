"""The stage runner: resume after SIGKILL, content addressing, shards + merge, clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features.images import encode, pixel_hash
from features.labels import get_label_set
from features.manifest import ManifestError, read_manifest, sample_id, to_table, write_manifest
from features.device import resolve_device
from pipeline.parts import RunConfig, batch_key, parse_shard, plan_batches, shard_of
from pipeline.runner import merge_shards, run_stage
from pipeline.stage import Stage, StageError, decode_batch, oom_retry, replace_images, set_columns

REPO = Path(__file__).resolve().parents[1]


def make_rows(n: int, seed: int = 0, shapes=((8, 8), (6, 10))) -> list[dict]:
    """n tiny grey images with labels cycling through FER2013's classes (two shapes)."""
    rng = np.random.default_rng(seed)
    ls = get_label_set("fer2013")
    rows = []
    for k in range(n):
        h, w = shapes[k % len(shapes)]
        arr = rng.integers(0, 256, (h, w), dtype=np.uint8)
        label = ls.names[k % len(ls)]
        src = f"img{k:04d}.png"
        rows.append(dict(
            sample_id=sample_id("synth", src), dataset="synth", split="train", orig_split="Training",
            source_path=src, label=label, label_id=ls.index(label), label_set=ls.name,
            image=encode(arr), image_format="png", width=w, height=h, channels=1,
            pixel_hash=pixel_hash(arr)))
    return rows


def make_manifest(path: Path, n: int = 24, seed: int = 0, rows: list[dict] | None = None) -> Path:
    write_manifest(to_table(rows or make_rows(n, seed)), path, get_label_set("fer2013"), {"test": True})
    return path


class InvertStage:
    """A cheap stand-in stage: inverts pixels, fills the enhance group, rejects 'fear' rows."""

    name = "invert"
    groups = ("enhance",)

    def __init__(self, offset: int = 0, sleep: float = 0.0):
        self.offset = offset
        self.sleep = sleep  # not a setting: it does not change the output
        self.setups = 0

    def settings(self) -> dict:
        return {"offset": self.offset}

    def setup(self) -> None:
        self.setups += 1

    def process(self, batch: pa.Table):
        time.sleep(self.sleep)
        keep = [i for i, lab in enumerate(batch.column("label").to_pylist()) if lab != "fear"]
        rejects = [{"sample_id": r["sample_id"], "source_path": r["source_path"], "reason": "fear is rejected"}
                   for i, r in enumerate(batch.select(["sample_id", "source_path"]).to_pylist()) if i not in keep]
        batch = batch.take(pa.array(keep, pa.int64()))
        src_hash = batch.column("pixel_hash")
        arrays = [((255 - a.astype(int) + self.offset) % 256).astype(np.uint8) for a in decode_batch(batch)]
        out = replace_images(batch, arrays)
        n = out.num_rows
        out = set_columns(out, {
            "enhance_sr": pa.array(["none"] * n), "enhance_color": pa.array(["invert"] * n),
            "enhance_model": pa.array([json.dumps(self.settings())] * n), "source_pixel_hash": src_hash})
        return out, rejects


def test_stage_protocol_and_plan_is_deterministic(tmp_path):
    assert isinstance(InvertStage(), Stage)
    table = to_table(make_rows(30))
    shuffled = table.take(pa.array(np.random.default_rng(1).permutation(30), pa.int64()))
    a = plan_batches(table, 4)
    b = plan_batches(shuffled, 4)
    assert [x.column("sample_id").to_pylist() for x in a] == [x.column("sample_id").to_pylist() for x in b]
    for batch in a:  # one shape per batch
        assert len(set(zip(batch.column("height").to_pylist(), batch.column("width").to_pylist()))) == 1
    shards = [plan_batches(table, 4, (i, 3)) for i in range(3)]
    ids = [s for sh in shards for bt in sh for s in bt.column("sample_id").to_pylist()]
    assert sorted(ids) == sorted(table.column("sample_id").to_pylist())
    assert all(shard_of(s, 3) == i for i, sh in enumerate(shards) for bt in sh
               for s in bt.column("sample_id").to_pylist())


def test_run_fills_group_rejects_and_reuses(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 24)
    stage = InvertStage()
    rep = run_stage(stage, src, tmp_path / "out.parquet", RunConfig(batch_size=5))
    out, ls = read_manifest(tmp_path / "out.parquet")
    assert ls.name == "fer2013"
    n_fear = sum(1 for r in make_rows(24) if r["label"] == "fear")
    assert rep.rows_in == 24 and rep.rows_out == 24 - n_fear == out.num_rows and rep.rejected == n_fear
    rejects = [json.loads(x) for x in Path(rep.rejects_path).read_text().splitlines()]
    assert {r["reason"] for r in rejects} == {"fear is rejected"} and len(rejects) == n_fear
    assert out.column("sample_id").to_pylist() == sorted(out.column("sample_id").to_pylist())
    assert set(out.column("enhance_color").to_pylist()) == {"invert"}
    assert out.column("source_pixel_hash").to_pylist() != out.column("pixel_hash").to_pylist()
    producer = json.loads(pq.read_schema(tmp_path / "out.parquet").metadata[b"affectlab.producer"])
    assert producer["stage"] == "invert" and producer["settings"] == {"offset": 0}
    # second run: every batch reused, the model never loaded, same bytes
    before = (tmp_path / "out.parquet").read_bytes()
    stage2 = InvertStage()
    rep2 = run_stage(stage2, src, tmp_path / "out.parquet", RunConfig(batch_size=5))
    assert rep2.reused == rep2.batches == rep.batches and rep2.computed_rows == 0 and stage2.setups == 0
    assert (tmp_path / "out.parquet").read_bytes() == before


def test_settings_change_recomputes(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 12)
    work = tmp_path / "work"
    run_stage(InvertStage(0), src, tmp_path / "a.parquet", RunConfig(batch_size=4, work_dir=work))
    rep = run_stage(InvertStage(7), src, tmp_path / "b.parquet", RunConfig(batch_size=4, work_dir=work))
    assert rep.reused == 0 and rep.computed_rows == 12
    a = read_manifest(tmp_path / "a.parquet")[0].column("pixel_hash").to_pylist()
    b = read_manifest(tmp_path / "b.parquet")[0].column("pixel_hash").to_pylist()
    assert a != b
    table = to_table(make_rows(12))
    batch = plan_batches(table, 4)[0]
    assert batch_key(InvertStage(0), batch) != batch_key(InvertStage(7), batch)
    # a relabelled row is new content too: a stale part must not bring back the old label
    relabelled = set_columns(batch, {"label": pa.array(["happy"] * batch.num_rows)})
    assert batch_key(InvertStage(0), batch) != batch_key(InvertStage(0), relabelled)


CHILD = """
import sys
sys.path[:0] = [{repo!r}, {tests!r}]
from pathlib import Path
from test_runner import InvertStage
from pipeline.parts import RunConfig
from pipeline.runner import run_stage
run_stage(InvertStage(sleep=0.4), Path({src!r}), Path({out!r}), RunConfig(batch_size=3))
"""


def test_resume_after_sigkill_is_identical(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 30)
    out = tmp_path / "killed" / "out.parquet"
    code = CHILD.format(repo=str(REPO), tests=str(REPO / "tests"), src=str(src), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": "1"})
    parts_dir = Path(str(out) + ".work") / "invert"
    deadline = time.time() + 60
    while time.time() < deadline:
        if parts_dir.is_dir() and len(list(parts_dir.glob("*.parquet"))) >= 3:
            break
        if proc.poll() is not None:
            pytest.fail("the child run ended before it could be killed")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    n_done = len(list(parts_dir.glob("*.parquet")))
    assert 3 <= n_done < 10
    rep = run_stage(InvertStage(), src, out, RunConfig(batch_size=3))
    assert rep.reused == n_done and rep.computed_rows == 30 - 3 * n_done
    ref = tmp_path / "clean" / "out.parquet"
    run_stage(InvertStage(), src, ref, RunConfig(batch_size=3))
    assert read_manifest(out)[0].equals(read_manifest(ref)[0])
    assert out.read_bytes() == ref.read_bytes()


def test_shards_then_merge_equal_unsharded(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 40)
    full = run_stage(InvertStage(), src, tmp_path / "full.parquet", RunConfig(batch_size=4))
    shard_files = []
    for i in range(3):
        rep = run_stage(InvertStage(), src, tmp_path / "out.parquet", RunConfig(batch_size=4, shard=(i, 3)))
        assert rep.out_path.name == f"out.shard-{i}-of-3.parquet"
        shard_files.append(rep.out_path)
    res = merge_shards(shard_files, tmp_path / "merged.parquet", check_in=src)
    assert res["check"]["lost"] == 0 and res["rows_out"] == full.rows_out
    merged = read_manifest(tmp_path / "merged.parquet")[0]
    assert merged.equals(read_manifest(tmp_path / "full.parquet")[0])
    merged_rejects = (tmp_path / "merged.rejects.jsonl").read_text().splitlines()
    assert len(merged_rejects) == full.rejected
    with pytest.raises(StageError, match=r"shards \[2\] of 3 are missing"):
        merge_shards(shard_files[:2], tmp_path / "m2.parquet")
    with pytest.raises(StageError, match="repeated"):
        merge_shards([*shard_files, tmp_path / "full.parquet"], tmp_path / "m3.parquet")


def test_merge_check_finds_lost_rows(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 20)
    bigger = make_manifest(tmp_path / "bigger.parquet", rows=make_rows(20) + make_rows(26)[20:])
    run_stage(InvertStage(), src, tmp_path / "out.parquet", RunConfig(batch_size=4))
    with pytest.raises(StageError, match="6 input rows are in no shard"):
        merge_shards([tmp_path / "out.parquet"], tmp_path / "m.parquet", check_in=bigger)


def test_bad_schema_manifest_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"path": ["a.png"], "label": ["happy"]}), bad)
    with pytest.raises(ManifestError, match="not an affectlab manifest|schema version"):
        run_stage(InvertStage(), bad, tmp_path / "out.parquet")
    with pytest.raises(ManifestError, match="does not exist"):
        run_stage(InvertStage(), tmp_path / "nope.parquet", tmp_path / "out.parquet")


def test_stage_returning_wrong_rows_is_a_clear_error(tmp_path):
    src = make_manifest(tmp_path / "in.parquet", 4)

    class Broken(InvertStage):
        def process(self, batch):
            return batch.drop_columns(["label"]), []

    with pytest.raises(StageError, match="do not fit the manifest schema"):
        run_stage(Broken(), src, tmp_path / "out.parquet")


def test_parse_shard_and_devices():
    assert parse_shard("1/4") == (1, 4) and parse_shard(None) is None
    for bad in ("4/4", "a/b", "1", "0/0"):
        with pytest.raises(ValueError, match="i/N"):
            parse_shard(bad)
    assert resolve_device("cpu") == "cpu"
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        from features.device import DeviceError

        with pytest.raises(DeviceError, match="no CUDA"):
            resolve_device("cuda")


def test_oom_retry_halves_the_batch():
    import torch

    sizes = []

    def fn(x):
        sizes.append(len(x))
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return x * 2

    out = oom_retry(fn, torch.arange(7))
    assert torch.equal(out, torch.arange(7) * 2)
    assert max(s for s in sizes[1:]) <= 4 and sizes[0] == 7
    with pytest.raises(torch.cuda.OutOfMemoryError):
        oom_retry(lambda x: (_ for _ in ()).throw(torch.cuda.OutOfMemoryError("x")), [1, 2, 3, 4], min_size=4)


def test_oom_retry_joins_arrays_and_tuples():
    import torch

    def fn(x):
        if len(x) > 2:
            raise torch.cuda.OutOfMemoryError("fake")
        return np.asarray(x) * 10, [str(v) for v in x]

    arr, names = oom_retry(fn, [1, 2, 3, 4, 5])
    assert arr.tolist() == [10, 20, 30, 40, 50]  # concatenated, not added elementwise
    assert names == ["1", "2", "3", "4", "5"]
