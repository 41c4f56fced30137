"""Stages on Ray Data: same rows as the local executor, a killed worker loses nothing, a clear
message without Ray. Marked `ray`: `make test` runs them; `pytest -m "not ray"` skips them."""

from __future__ import annotations

import builtins
import os
import signal
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.parts import RayConfig, RunConfig
from pipeline.runner import run_stage
from pipeline.stage import StageError
from test_runner import make_manifest

pytestmark = pytest.mark.ray
ray = pytest.importorskip("ray", reason="the optional Ray extra is not installed (make setup-ray)")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    # the test's stage classes live in this module, which Ray workers cannot import by name
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


class InvertStage:
    """Cheap row-to-row stage: inverts the pixels. Records its worker pids in `pid_dir`."""

    name = "invert"
    groups = ()

    def __init__(self, delay: float = 0.0, pid_dir: str | None = None):
        self.delay, self.pid_dir = delay, pid_dir

    def settings(self) -> dict:
        return {"op": "invert"}

    def setup(self) -> None:
        if self.pid_dir:
            Path(self.pid_dir, f"{os.getpid()}.pid").write_text("")

    def process(self, batch: pa.Table):
        from pipeline.stage import decode_batch, replace_images

        time.sleep(self.delay)
        arrays = [255 - a for a in decode_batch(batch)]
        return replace_images(batch, arrays), []


def _rows(path):
    t = pq.read_table(path)
    return sorted(zip(t.column("sample_id").to_pylist(), t.column("pixel_hash").to_pylist()))


def test_ray_equals_local(tmp_path, local_ray):
    src = make_manifest(tmp_path / "in.parquet", n=40)
    local = run_stage(InvertStage(), src, tmp_path / "local.parquet", RunConfig(batch_size=6))
    rc = RunConfig(batch_size=6, executor="ray", ray=RayConfig(concurrency=2))
    remote = run_stage(InvertStage(), src, tmp_path / "ray.parquet", rc)
    assert remote.computed_rows == 0 and remote.reused == remote.batches  # Ray did every batch
    assert remote.remote_rows == 40 and remote.images_per_s > 0  # ... and its speed is reported
    assert _rows(tmp_path / "ray.parquet") == _rows(tmp_path / "local.parquet")
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))
    assert local.rows_out == 40
    # a re-run finds every batch done, exactly as locally
    again = run_stage(InvertStage(), src, tmp_path / "ray.parquet", rc)
    assert again.reused == again.batches and again.computed_rows == 0


def test_ray_enhance_bicubic_equals_local(tmp_path, local_ray):
    from pipeline.enhance import EnhanceStage

    src = make_manifest(tmp_path / "in.parquet", n=16)
    stage = EnhanceStage(sr="bicubic", color="gray2rgb")
    run_stage(stage, src, tmp_path / "local.parquet", RunConfig(batch_size=4))
    run_stage(stage, src, tmp_path / "ray.parquet",
              RunConfig(batch_size=4, executor="ray", ray=RayConfig(concurrency=2)))
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))


def test_killed_worker_loses_nothing(tmp_path, local_ray):
    src = make_manifest(tmp_path / "in.parquet", n=48)
    run_stage(InvertStage(), src, tmp_path / "local.parquet", RunConfig(batch_size=4))
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    rc = RunConfig(batch_size=4, executor="ray", ray=RayConfig(concurrency=2))
    result: dict = {}

    def go():
        try:
            result["report"] = run_stage(InvertStage(delay=0.4, pid_dir=str(pid_dir)), src,
                                         tmp_path / "ray.parquet", rc)
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    th = threading.Thread(target=go)
    th.start()
    deadline = time.time() + 120
    parts = tmp_path / "ray.parquet.work" / "invert"
    while time.time() < deadline and not (parts.exists() and len(list(parts.glob("*.parquet"))) >= 2):
        time.sleep(0.1)
    victims = [int(p.stem) for p in pid_dir.glob("*.pid")]
    assert victims, "no Ray worker started"
    os.kill(victims[0], signal.SIGKILL)
    th.join(timeout=300)
    assert not th.is_alive()
    assert "error" not in result, result.get("error")
    assert pq.read_table(tmp_path / "ray.parquet").equals(pq.read_table(tmp_path / "local.parquet"))


def test_without_ray_says_how_to_install(tmp_path, monkeypatch):
    import pipeline.ray_executor as rx

    real = builtins.__import__

    def no_ray(name, *a, **k):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("No module named 'ray'")
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    src = make_manifest(tmp_path / "in.parquet", n=4)
    with pytest.raises(StageError, match=r"pip install 'affectlab\[ray\]'"):
        run_stage(InvertStage(), src, tmp_path / "o.parquet", RunConfig(executor="ray"))
    assert rx.INSTALL_HINT


def test_cli_executor_ray_matches_local(tmp_path, local_ray):
    from typer.testing import CliRunner

    from pipeline.cli import app

    src = make_manifest(tmp_path / "in.parquet", n=12)
    r = CliRunner()
    base = ["enhance", "--in", str(src), "--sr", "bicubic", "--color", "gray2rgb", "--batch-size", "4"]
    res = r.invoke(app, base + ["--out", str(tmp_path / "local.parquet")])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, base + ["--out", str(tmp_path / "ray.parquet"), "--executor", "ray", "--concurrency", "2"])
    assert res.exit_code == 0, res.output
    assert _rows(tmp_path / "ray.parquet") == _rows(tmp_path / "local.parquet")
    res = r.invoke(app, base + ["--out", str(tmp_path / "x.parquet"), "--executor", "spark"])
    assert res.exit_code == 2 and "local or ray" in res.output


def test_ray_embed_minilm_equals_local(tmp_path, local_ray):
    """A model-backed stage writing a feature file (the real offline MiniLM) on an actor pool."""
    from tiny_models import write_face_manifest

    from pipeline.embed import EmbedConfig, EmbedStage

    caps = ["a man with an open mouth", "a woman smiling", "a child with raised eyebrows"]
    src = write_face_manifest(tmp_path / "in.parquet", n=12, captions=caps)
    cfg = EmbedConfig(encoder="minilm")
    run_stage(EmbedStage(cfg, source=str(src)), src, tmp_path / "local.parquet", RunConfig(batch_size=4))
    rc = RunConfig(batch_size=4, executor="ray", ray=RayConfig(concurrency=2))
    rep = run_stage(EmbedStage(cfg, source=str(src)), src, tmp_path / "ray.parquet", rc)
    assert rep.computed_rows == 0
    a, b = pq.read_table(tmp_path / "local.parquet"), pq.read_table(tmp_path / "ray.parquet")
    assert a.column("sample_id").to_pylist() == b.column("sample_id").to_pylist()
    assert a.column("vector").to_pylist() == b.column("vector").to_pylist()


def test_ray_faces_and_caption_equal_local(tmp_path, local_ray):
    """The two remaining row-to-row stages: Haar face crops (a real photo) and BLIP captions."""
    from skimage.data import astronaut
    from tiny_models import face_rows, tiny_blip_captioner, write_face_manifest

    from features.images import encode, pixel_hash
    from pipeline.caption import CaptionConfig, CaptionStage
    from pipeline.faces import FaceStage

    rows = face_rows(6)
    photo = astronaut()
    rows[0].update(image=encode(photo), width=photo.shape[1], height=photo.shape[0], channels=3,
                   pixel_hash=pixel_hash(photo))
    src = write_face_manifest(tmp_path / "in.parquet", rows=rows)
    rc = RunConfig(batch_size=2, executor="ray", ray=RayConfig(concurrency=2))
    for name, stage in (("faces", FaceStage(size=64)),
                        ("caption", CaptionStage(CaptionConfig(model=str(tiny_blip_captioner(tmp_path / "blip")),
                                                               max_new_tokens=4, dtype="fp32")))):
        run_stage(stage, src, tmp_path / f"{name}_local.parquet", RunConfig(batch_size=2))
        rep = run_stage(stage, src, tmp_path / f"{name}_ray.parquet", rc)
        assert rep.computed_rows == 0, name
        a, b = pq.read_table(tmp_path / f"{name}_local.parquet"), pq.read_table(tmp_path / f"{name}_ray.parquet")
        assert a.equals(b), name
    assert pq.read_table(tmp_path / "faces_ray.parquet").num_rows == 1  # only the photo has a face
