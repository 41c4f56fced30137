"""pipeline stats: class counts per split / fold under presets, duplicates, leaks, JSON, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from features.labels import get_label_set
from pipeline.cli import app
from pipeline.commands.stats import collect
from pipeline.ingest import IngestConfig, ingest, write_result

BASIC7 = get_label_set("fer2013").names
# per class: train images, test images (one test image of "happy" duplicates a train image)
PER_CLASS = {"angry": 6, "disgust": 3, "fear": 5, "happy": 9, "neutral": 7, "sad": 4, "surprise": 2}


def _save(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.RandomState(seed).rand(10, 10) * 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def manifests(tmp_path_factory) -> list[Path]:
    tmp = tmp_path_factory.mktemp("stats")
    n = 0
    for c, k in PER_CLASS.items():
        for i in range(k):
            _save(tmp / "data" / "train" / c / f"{i}.png", n); n += 1
        _save(tmp / "data" / "test" / c / "t.png", n); n += 1
    _save(tmp / "data" / "test" / "happy" / "dup.png", 0 + sum(list(PER_CLASS.values())[:3]) + 3)  # = happy/0.png
    r = ingest(tmp / "data", IngestConfig(layout="imagefolder", val_fraction=0.0))
    written, _ = write_result(r, tmp / "m")
    return [written["train"], written["test"]]


def test_counts_per_split(manifests):
    rep = collect(manifests, "7", ("split",))
    rows = {r["split"]: r for r in rep["counts"]}
    assert rows["train"]["counts"] == PER_CLASS and rows["train"]["total"] == 36
    assert rows["test"]["counts"] == {c: 1 + (c == "happy") for c in BASIC7}
    assert rep["rows"] == 36 + 8 and rep["classes"] == list(BASIC7)
    assert rep["duplicates"]["test_rows_leaked"] == 1 and rep["duplicates"]["groups_train_test"] == 1
    assert rep["leaks"] == [{"split": "test", "orig_split": "test", "leaked": 1, "rows": 8}]


@pytest.mark.parametrize("preset,expected", [
    ("5", {"angry": 6 + 3, "sad": 4 + 5, "happy": 9, "neutral": 7, "surprise": 2}),
    ("4", {"positive": 9, "negative": 6 + 3 + 5 + 4, "neutral": 7, "surprise": 2}),
    ("2", {"positive": 9 + 7 + 2, "negative": 6 + 3 + 5 + 4}),
])
def test_presets(manifests, preset, expected):
    rep = collect(manifests[:1], preset, ("split",))
    assert rep["counts"][0]["counts"] == expected and set(rep["classes"]) == set(expected)


def test_by_orig_split_and_bad_by(manifests):
    rep = collect(manifests, "7", ("split", "orig_split"))
    assert {(r["split"], r["orig_split"]) for r in rep["counts"]} == {("train", "train"), ("test", "test")}
    with pytest.raises(ValueError, match="choose from split, orig_split"):
        collect(manifests, "7", ("label; DROP TABLE m",))


def test_cli_table_and_json(manifests):
    runner = CliRunner()
    res = runner.invoke(app, ["stats", *map(str, manifests), "--preset", "2"])
    assert res.exit_code == 0, res.output
    assert "positive" in res.output and "negative" in res.output and "leaked" in res.output
    res = runner.invoke(app, ["stats", *map(str, manifests), "--json", "--by", "split,orig_split"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["rows"] == 44 and data["by"] == ["split", "orig_split"]


def test_cli_errors(manifests, tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["stats", str(tmp_path / "none.parquet")])
    assert res.exit_code == 2 and "pipeline ingest" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["stats", str(manifests[0]), "--preset", "3"])
    assert res.exit_code == 2 and "unknown preset" in res.output


def test_mixed_label_sets_refused(manifests, tmp_path):
    root = tmp_path / "ck"
    for c in get_label_set("ckplus").names:
        for i in range(2):
            _save(root / c / f"S0{i}0_001_0000000{i}.png", hash((c, i)) % 1000)
    r = ingest(root, IngestConfig(layout="ckplus", val_fraction=0))
    written, _ = write_result(r, tmp_path / "ck")
    with pytest.raises(ValueError, match="different label sets"):
        collect([manifests[0], written["train"]], "7", ("split",))
