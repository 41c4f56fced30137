"""benchmarks/bench_ablation.py end to end on tiny synthetic manifests: every arm trains and is
scored through the CLIs, the SMOTE arm sees the baseline's steps, and a second call resumes."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("bench_ablation", ROOT / "benchmarks" / "bench_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_ablation"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_fer(tmp_path_factory):
    """fer_{train,val,test}.parquet made by `pipeline synth` + `pipeline ingest`, unbalanced."""
    import numpy as np
    from typer.testing import CliRunner

    from features.manifest import read_manifest, write_manifest
    from pipeline.cli import app

    d = tmp_path_factory.mktemp("abl")
    for cmd in (["synth", "--out", str(d / "raw"), "--per-class", "14", "--seed", "3", "--videos", "0"],
                ["ingest", str(d / "raw"), "--layout", "imagefolder", "--dataset", "synth",
                 "--out", str(d / "m" / "fer")]):
        r = CliRunner().invoke(app, cmd)
        assert r.exit_code == 0, r.output
    # unbalance the training split, so that BorderlineSMOTE has something to do
    t, ls = read_manifest(d / "m" / "fer_train.parquet")
    y = t.column("label_id").to_numpy()
    keep = np.concatenate([np.flatnonzero(y == k)[: (7 if k % 2 else None)] for k in range(len(ls))])
    write_manifest(t.take(np.sort(keep)), d / "m" / "fer_train.parquet", ls)
    return d


@pytest.mark.slow
def test_every_arm_runs_and_a_second_call_resumes(tiny_fer):
    ab = _load()
    runs, out = tiny_fer / "runs", tiny_fer / "ablation.json"
    argv = ["--manifests", str(tiny_fer / "m"), "--runs", str(runs), "--epochs", "2", "--threads", "1",
            "--json", str(out), "--only", "baseline", "borderline-smote", "sr-bicubic-x4"]
    assert ab.main(argv) == 0
    rep = json.loads(out.read_text())
    arms = {a["arm"]: a for a in rep["arms"]}
    assert set(arms) == {"baseline", "borderline-smote", "sr-bicubic-x4"}
    base, smote = arms["baseline"], arms["borderline-smote"]
    assert smote["train_rows"] > base["train_rows"]  # oversampled
    assert smote["max_steps_per_epoch"] == ab.steps_per_epoch(base["train_rows"])
    for a in arms.values():
        assert 0.0 <= a["test"]["all"]["plain"]["war"] <= 1.0 and "flip" in a["test"]["all"]
        assert "val_uar" in a["val"]
    x4 = json.loads((runs / "sr-bicubic-x4" / "best.json").read_text())
    assert x4["model"]["config"]["input_size"] == 96 and x4["model"]["config"]["width"] == 0.25
    from features.manifest import read_manifest

    t, _ = read_manifest(runs / "manifests" / "fer_test_x4.parquet", ["width"])
    assert set(t.column("width").to_pylist()) == {4 * w for w in
                                                  set(read_manifest(tiny_fer / "m" / "fer_test.parquet", ["width"])[0]
                                                      .column("width").to_pylist())}
    assert set(json.loads((runs / "manifests" / "prepare_seconds.json").read_text())) == {
        "balance", "bicubic_x4_train", "bicubic_x4_val", "bicubic_x4_test"}
    # a second call trains nothing: same numbers, no new train command in the log
    before = (runs / "commands.log").read_text().count("train run")
    assert ab.main(argv) == 0
    assert (runs / "commands.log").read_text().count("train run") == before
    assert json.loads(out.read_text())["arms"] == rep["arms"]
    md = out.with_suffix(".md").read_text().splitlines()
    assert len(md) == 2 + 3 and md[2].startswith("| baseline |")
    assert out.with_suffix(".png").stat().st_size > 5000
