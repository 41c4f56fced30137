"""benchmarks/bench_mutation.py: a finished module's result is merged into the JSON as it is on
disk when it finishes (another module's run may have written it meanwhile), and mutants run with
one BLAS thread."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_bench_all import ROOT, _load as _load_benchmark  # noqa: E402


def _load():
    return _load_benchmark("bench_mutation")


def test_results_of_concurrent_runs_are_merged_not_overwritten(tmp_path, monkeypatch):
    import importlib.metadata as md

    real_version = md.version
    # the script refuses to start without mutmut; nothing here runs it
    monkeypatch.setattr(md, "version", lambda name: "3.8.1" if name == "mutmut" else real_version(name))
    bm = _load()
    stored = json.loads((ROOT / "docs/results/mutation/mutation.json").read_text())["modules"]
    sample = stored["features/labels.py"]
    path, md = tmp_path / "mutation.json", tmp_path / "README.md"
    path.write_text(json.dumps({"modules": {"features/labels.py": sample}}))
    seen_env = {}

    def fake_run(module, workdir, ref, children):
        # meanwhile another run finishes and writes its module, with a note
        on_disk = json.loads(path.read_text())
        on_disk["modules"]["train/metrics.py"] = {**copy.deepcopy(sample), "module": "train/metrics.py"}
        on_disk["notes"] = ["written by the other run"]
        path.write_text(json.dumps(on_disk))
        return {**copy.deepcopy(sample), "module": module, "killed": 1, "mutants": 2,
                "equivalent_mutants": [], "surviving": []}

    monkeypatch.setattr(bm, "run_module", fake_run)
    assert bm.main(["--module", "train/losses.py", "--json", str(path), "--md", str(md),
                    "--workdir", str(tmp_path / "w")]) == 0
    out = json.loads(path.read_text())
    assert set(out["modules"]) == {"features/labels.py", "train/metrics.py", "train/losses.py"}
    assert out["modules"]["train/losses.py"]["score"] == 50.0 and out["notes"] == ["written by the other run"]
    assert "train/metrics.py" in md.read_text() and "train/losses.py" in md.read_text()


def test_mutants_run_with_one_blas_thread(tmp_path, monkeypatch):
    bm = _load()
    envs = []

    class Done(Exception):
        pass

    def fake_subprocess_run(cmd, cwd=None, env=None, **kw):
        envs.append(env)
        raise Done

    monkeypatch.setattr(bm.subprocess, "run", fake_subprocess_run)
    monkeypatch.setattr(bm, "copy_tree", lambda tree, ref: None)  # no copy of the checkout: only the env matters
    monkeypatch.setattr(bm, "configure", lambda tree, module, tests: None)
    (tmp_path / "w").mkdir()
    with pytest.raises(Done):
        bm.run_module("train/losses.py", tmp_path / "w", None, 1)
    assert envs and envs[0]["OMP_NUM_THREADS"] == "1" and envs[0]["MKL_NUM_THREADS"] == "1"
