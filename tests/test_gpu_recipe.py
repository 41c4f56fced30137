"""benchmarks/gpu_recipe.py at tiny scale on the CPU: every step runs through the user's CLIs,
lands in one folder with a test report each and a summary, and a second call trains nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from train_fixtures import single_thread, write_synth  # noqa: E402,F401

pytest.importorskip("timm", reason="the `pretrained` extra (timm) is not installed")


@pytest.mark.slow
def test_gpu_recipe_smoke_on_cpu(tmp_path):
    import gpu_recipe

    tr = write_synth(tmp_path / "s_train.parquet", 28, "train", seed=1)
    va = write_synth(tmp_path / "s_val.parquet", 14, "val", seed=2)
    te = write_synth(tmp_path / "s_test.parquet", 14, "test", seed=3)
    out = tmp_path / "recipe"
    args = ["--out", str(out), "--train", str(tr), "--val", str(va), "--test", str(te), "--device",
            "cpu", "--threads", "1", "--smoke", "--no-pretrained", "--lite-size", "32"]
    summary = gpu_recipe.main(args)
    for step in ("vgg73", "lite0", "student", "student_la"):
        assert (out / step / "best.safetensors").exists(), step
    for step in ("vgg73", "lite0", "student_la"):
        assert summary["steps"][step]["test"]["all plain"]["war"] is not None
        assert (out / f"eval_{step}" / "report.json").exists()
    side = json.loads((out / "student" / "best.json").read_text())
    assert side["teacher"]["path"] == str(out / "lite0")  # the student learnt from lite0
    assert side["preprocess"]["size"] == [48, 48] and side["preprocess"]["channels"] == 1
    assert (out / "summary.md").read_text().count("| vgg73 |") >= 1
    again = gpu_recipe.main(args)  # every step done: nothing is trained twice
    assert all(d.get("train_s") is None for k, d in again["steps"].items() if k != "student_la")
