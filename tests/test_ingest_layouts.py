"""The layout registry: every registered layout is complete and fails with a message, `--layout
auto` follows the rules' detect_order, and a layout registered from outside pipeline/layouts/ (here,
from this test module; in docs/ingest.md, a new file) ingests with no edit to any project file."""

from __future__ import annotations

import csv
import re
import types
from pathlib import Path

import numpy as np
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from features.labels import get_label_set
from features.manifest import read_manifest
from pipeline.cli import app
from pipeline.ingest import IngestConfig, IngestError, ingest
from pipeline.layouts import detect_layout, get_layout, list_layouts, register_layout, unregister_layout
from pipeline.layouts.base import JOIN_OPTIONS, Record, Source, is_image, label_map, resolve_label_set

ROOT = Path(__file__).resolve().parents[1]
BASIC7 = get_label_set("fer2013").names


def _image(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.RandomState(seed).randint(0, 256, (10, 10), dtype=np.uint8)).save(path)


def labels_txt_folder(root: Path, per_class: int = 4) -> Path:
    """`labels.txt` (`<file> <label>` per line) beside `pics/*.png`: a format no built-in layout reads."""
    lines = []
    for k, name in enumerate(BASIC7):
        for i in range(per_class):
            _image(root / "pics" / f"{name[:3]}{i}.png", k * 100 + i)
            lines.append(f"pics/{name[:3]}{i}.png {name}")
    (root / "labels.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture
def labels_txt():
    """A throwaway layout registered here, the way a module in pipeline/layouts/ would register it."""

    def looks_like(path: Path) -> bool:
        return (path / "labels.txt").is_file()

    @register_layout("labels-txt", dataset="toy", detect=looks_like, detect_order=5)
    def read(root: Path, cfg: IngestConfig) -> Source:
        label_set = resolve_label_set(cfg, "fer2013")
        pairs = [line.split() for line in (root / "labels.txt").read_text().splitlines() if line.strip()]
        names = label_map({lab for _, lab in pairs}, label_set, "label(s)")
        return Source(label_set, [Record(f, names[lab], None, file=str(root / f)) for f, lab in pairs])

    yield get_layout("labels-txt")
    unregister_layout("labels-txt")


def test_a_layout_registered_outside_the_package_ingests(tmp_path, labels_txt):
    root = labels_txt_folder(tmp_path / "toy")
    assert "labels-txt" in list_layouts() and detect_layout(root) == "labels-txt"
    result = ingest(root, IngestConfig(seed=0))
    assert (result.layout, result.dataset, result.label_set.name) == ("labels-txt", "toy", "fer2013")
    rows = [r for t in result.tables.values() for r in t.to_pylist()]
    assert len(rows) == 28 and set(result.tables) == {"train", "val", "test"}  # no split given: test carved
    by_path = {r["source_path"]: r["label"] for r in rows}
    assert by_path["pics/hap2.png"] == "happy" and by_path["pics/sur0.png"] == "surprise"
    # the CLI knows it too: auto-detected, named with --layout, and listed in the error lines
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "m" / "toy")])
    assert res.exit_code == 0, res.output
    assert "layout labels-txt" in res.output
    table, label_set = read_manifest(tmp_path / "m" / "toy_train.parquet")
    assert set(table.column("dataset").to_pylist()) == {"toy"} and label_set.name == "fer2013"
    res = runner.invoke(app, ["ingest", str(root), "--layout", "labels-txt", "--out", str(tmp_path / "n" / "toy")])
    assert res.exit_code == 0, res.output
    with pytest.raises(IngestError, match="layouts: .*parquet, labels-txt"):
        ingest(tmp_path / "missing", IngestConfig())


def test_detection_follows_detect_order(tmp_path, labels_txt):
    both = labels_txt_folder(tmp_path / "both")
    for c in BASIC7:  # class folders too: imagefolder's rule (order 90) holds as well
        _image(both / c / "0.png", 7)
    assert detect_layout(both) == "labels-txt"  # order 5 is tried first

    @register_layout("marker-late", dataset=None, detect=lambda p: (p / "marker.txt").is_file(), detect_order=95)
    def read_late(root: Path, cfg: IngestConfig) -> Source:
        raise AssertionError("not read in this test")

    try:
        (both / "labels.txt").rename(both / "marker.txt")
        assert detect_layout(both) == "imagefolder"  # 90 before 95
        (tmp_path / "only").mkdir()
        (tmp_path / "only" / "marker.txt").write_text("")
        assert detect_layout(tmp_path / "only") == "marker-late"  # no earlier rule holds
    finally:
        unregister_layout("marker-late")


def test_the_registry_refuses_duplicates_and_unknown_options():
    with pytest.raises(ValueError, match="already registered"):
        register_layout("dfew", dataset="dfew")(lambda root, cfg: None)
    with pytest.raises(ValueError, match="auto"):
        register_layout("auto", dataset=None)
    with pytest.raises(ValueError, match="no such join option"):
        register_layout("x", dataset=None, joins=("ferplus_json",))
    assert get_layout("dfew").dataset == "dfew"  # the built-in one is untouched
    with pytest.raises(IngestError, match="unknown layout 'kaggle'; layouts: auto, fer2013-folders"):
        get_layout("kaggle")


@pytest.mark.parametrize("name", list_layouts())
def test_every_layout_is_complete_and_refuses_an_empty_folder(tmp_path, name):
    layout = get_layout(name)
    assert layout.name == name and callable(layout.read) and callable(layout.detect)
    assert set(layout.joins) <= set(JOIN_OPTIONS)
    assert all(option in JOIN_OPTIONS and target in list_layouts() for option, target in layout.becomes.items())
    (tmp_path / "empty").mkdir()
    assert not layout.detect(tmp_path / "empty")
    with pytest.raises(IngestError):  # a message naming what is missing, never a crash
        ingest(tmp_path / "empty", IngestConfig(layout=name))


def test_help_lists_every_layout():
    command = typer.main.get_command(app).commands["ingest"]
    layout_help = next(p.help for p in command.params if p.name == "layout")
    assert re.findall(r"[\w-]+", layout_help.split(":", 1)[1]) == ["auto", *list_layouts()]


def test_the_docs_example_layout_is_one_complete_module(tmp_path):
    """docs/ingest.md "Adding a layout": its module, run as it stands, ingests the folder it describes."""
    text = (ROOT / "docs" / "ingest.md").read_text()
    section = text.split("## Adding a layout", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("csv_list_example")
    exec(compile(code, "docs/ingest.md", "exec"), module.__dict__)
    name = "csv-list"
    assert name in list_layouts()
    try:
        root = tmp_path / "listed"
        root.mkdir()
        with open(root / "labels.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "label", "split"])
            for k, c in enumerate(BASIC7):
                for i in range(4):
                    _image(root / "img" / f"{c}{i}.png", k * 10 + i)
                    writer.writerow([f"img/{c}{i}.png", c, "test" if i == 3 else "train"])
            writer.writerow(["img/gone.png", "happy", "train"])
        assert detect_layout(root) == name
        result = ingest(root, IngestConfig(seed=0))
        assert result.layout == name and result.dataset == "listed"  # no dataset key: the folder name
        assert result.tables["test"].num_rows == 7 and sum(t.num_rows for t in result.tables.values()) == 28
        assert [(r.source_path, r.kind) for r in result.rejects] == [("img/gone.png", "missing")]
        assert all(is_image(root / p) for p in result.tables["train"].column("source_path").to_pylist())
    finally:
        unregister_layout(name)

