"""The package's shipped checkpoints (train/weights/), each of them: loads offline without
unpickling, is small, says "happy" for a smiling astronaut, and reproduces its recorded FER2013
test accuracy when the shared data is beside the repo. One of them is the default."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WEIGHTS = Path(__file__).resolve().parents[1] / "train" / "weights"
SHIPPED = sorted(p.stem for p in WEIGHTS.glob("*.safetensors"))
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"

pytestmark = pytest.mark.skipif(not SHIPPED, reason="no shipped checkpoint in train/weights yet")


def test_the_default_is_shipped():
    from train.api import DEFAULT_MODEL, default_checkpoint

    assert DEFAULT_MODEL in SHIPPED
    assert default_checkpoint() == WEIGHTS / f"{DEFAULT_MODEL}.safetensors"


@pytest.mark.parametrize("name", SHIPPED)
def test_loads_small_and_self_describing(name):
    from train.checkpoint import load_checkpoint

    path = WEIGHTS / f"{name}.safetensors"
    assert path.stat().st_size <= 20 * 1024 * 1024
    model, sidecar = load_checkpoint(path)
    assert sidecar["labels"]["class_names"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    assert sidecar["model"]["name"] == "vgg"
    assert (WEIGHTS / "MODEL_CARD.md").exists()


@pytest.mark.parametrize("name", SHIPPED)
def test_predicts_happy_for_the_astronaut(name):
    from skimage.data import astronaut

    from train.api import DEFAULT_MODEL, EmotionPredictor

    path = None if name == DEFAULT_MODEL else WEIGHTS / f"{name}.safetensors"  # None: the default
    faces = EmotionPredictor.from_checkpoint(path).predict(astronaut())
    assert len(faces) == 1
    assert faces[0].label == "happy", faces[0].topk


@pytest.mark.shared
@pytest.mark.slow
@pytest.mark.skipif(not (DATA / "test.parquet").exists(), reason=f"shared FER2013 not found at {DATA}")
def test_matches_recorded_test_accuracy(tmp_path):
    from pipeline.ingest import IngestConfig, ingest, write_result
    from train.evaluate import EvalConfig, evaluate

    written, _ = write_result(ingest(DATA, IngestConfig(layout="parquet", dataset="fer2013")), tmp_path / "fer")
    for name in SHIPPED:
        recorded = json.loads((WEIGHTS / f"{name}.results.json").read_text())["test"]
        report = evaluate(WEIGHTS / f"{name}.safetensors", written["test"], EvalConfig(plots=False))
        for variant in ("all", "leak_free", "private_test"):
            got = report["variants"][variant]["plain"]
            want = recorded[variant]["plain"]
            assert got["n"] == want["n"]
            # CPU float math may flip a near-tie or two; a different model would move it by far more
            assert abs(got["war"] - want["war"]) <= 2 / want["n"], (name, variant, got["war"], want["war"])
