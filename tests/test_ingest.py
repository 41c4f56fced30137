"""pipeline ingest: every layout on a tiny tree built in tmp_path, every bad input, the CLI."""

from __future__ import annotations

import csv
import struct
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from typer.testing import CliRunner

from features import images
from features.labels import FER2013_CSV_ORDER, FERPLUS_VOTE_COLUMNS, get_label_set
from features.manifest import read_manifest
from pipeline.cli import app
from pipeline.ingest import IngestConfig, IngestError, holdout, ingest, write_result
from pipeline.layouts import detect_layout, list_layouts
from pipeline.layouts.fer_files import ferplus_majority

BASIC7 = get_label_set("fer2013").names


def _arr(seed: int, size: int = 12, rgb: bool = False) -> np.ndarray:
    rng = np.random.RandomState(seed)
    shape = (size, size, 3) if rgb else (size, size)
    return (rng.rand(*shape) * 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _rows(result, split):
    return result.tables[split].to_pylist() if split in result.tables else []


def _all(result):
    return [r for s in ("train", "val", "test") for r in _rows(result, s)]


def _bomb_png(w: int = 10_000, h: int = 10_000) -> bytes:
    """A valid PNG header claiming w x h pixels: refused before any pixel is decoded."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- layout fixtures

def fer_folders(root: Path, per_class: int = 4) -> Path:
    n = 0
    for c in BASIC7:
        for i in range(per_class):
            _save(root / "train" / c / f"Training_{n}.jpg", _arr(n)); n += 1
        _save(root / "test" / c / f"PublicTest_{n}.jpg", _arr(n)); n += 1
        _save(root / "test" / c / f"PrivateTest_{n}.jpg", _arr(n)); n += 1
    # a test image byte-identical to a training one: the leak FER2013 has 568 of
    src = sorted((root / "train" / "happy").iterdir())[0]
    (root / "test" / "happy" / "PrivateTest_dup.jpg").write_bytes(src.read_bytes())
    return root


def fer_csv(root: Path, n: int = 28, bad_row: bool = False) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    usages = ["Training"] * (n - 6) + ["PublicTest"] * 3 + ["PrivateTest"] * 3
    with open(root / "fer2013.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["emotion", "pixels", "Usage"])
        for i in range(n):
            w.writerow([i % 7, " ".join(map(str, _arr(i, 6).ravel())), usages[i]])
        if bad_row:
            w.writerow([0, "1 2 3", "Training"])
    return root / "fer2013.csv"


VOTES = {  # FER+ vote rows -> what the majority rule must give
    "happy": [0, 9, 1, 0, 0, 0, 0, 0, 0, 0],
    "contempt": [2, 0, 0, 0, 0, 0, 0, 7, 1, 0],
    "tie": [4, 0, 0, 4, 2, 0, 0, 0, 0, 0],
    "unknown": [1, 0, 0, 0, 0, 0, 0, 0, 9, 0],
    "nf": [0, 0, 0, 0, 0, 0, 0, 0, 0, 10],
}


def ferplus_csv(root: Path) -> Path:
    csv_path = fer_csv(root, n=14)
    kinds = ["happy", "contempt", "tie", "unknown", "nf", "happy", "happy"] * 2
    with open(root / "fer2013new.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Usage", "Image name", *FERPLUS_VOTE_COLUMNS])
        usages = ["Training"] * 8 + ["PublicTest"] * 3 + ["PrivateTest"] * 3
        for i, k in enumerate(kinds):
            name = "" if k == "nf" else f"fer{i:07d}.png"
            w.writerow([usages[i], name, *VOTES[k]])
    return csv_path


def shared_parquet(root: Path, n_train: int = 21, n_test: int = 7, dup: bool = True) -> Path:
    """The ../shared/data/fer2013 format: image bytes, label, label_id, split, usage, source_path."""
    root.mkdir(parents=True, exist_ok=True)
    for split, n, usage, off in (("train", n_train, "Training", 0), ("test", n_test, "PublicTest", 1000)):
        rows = []
        for i in range(n):
            arr = _arr(i if (dup and split == "test" and i == 0) else off + i)
            lab = BASIC7[i % 7]
            rows.append({"image": images.encode(arr, "png"), "label": lab, "label_id": i % 7, "split": split,
                         "usage": usage, "source_path": f"{split}/{lab}/{usage}_{i}.png"})
        pq.write_table(pa.Table.from_pylist(rows), root / f"{split}.parquet")
    return root


def ckplus(root: Path, subjects: int = 10) -> Path:
    cls = get_label_set("ckplus").names
    n = 0
    for s in range(subjects):
        for k in range(2):
            c = cls[(s + k) % 7]
            for frame in (8, 9):
                _save(root / c / f"S{s + 10:03d}_{k + 1:03d}_{frame:08d}.png", _arr(n)); n += 1
    return root


def rafdb(root: Path, compound: bool = False, missing: bool = False) -> Path:
    lines = []
    k = 11 if compound else 7
    for split, n in (("train", 2 * k), ("test", k)):
        for i in range(1, n + 1):
            name = f"{split}_{i:05d}"
            _save(root / "Image" / "aligned" / f"{name}_aligned.jpg", _arr(hash(name) % 10_000, rgb=True))
            lines.append(f"{name}.jpg {(i - 1) % k + 1}")
    if missing:
        lines.append("train_09999.jpg 1")
    (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root


def dfew(root: Path, missing: bool = False) -> Path:
    clips = root / "Clip" / "clip_224x224_16f"
    n = 0
    split_rows = {"train": [], "test": []}
    for cid in range(1, 29):
        split = "test" if cid > 21 else "train"
        for f in range(1, 5):
            _save(clips / f"{cid:05d}" / f"{f:05d}.jpg", _arr(n, rgb=True)); n += 1
        split_rows[split].append((cid, (cid - 1) % 7 + 1))
    if missing:
        split_rows["train"].append((999, 1))
    for split, rows in split_rows.items():
        d = root / "EmoLabel_DataSplit" / f"{split}(single-labeled)"
        d.mkdir(parents=True, exist_ok=True)
        with open(d / "set_1.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["video_name", "label"])
            w.writerows(rows)
    return root


def imagefolder(root: Path, split_dirs: bool = True, videos: bool = False, per_class: int = 5) -> Path:
    n = 0
    for c in BASIC7:
        for i in range(per_class):
            sub = ("train" if i < per_class - 1 else "test") if split_dirs else ""
            _save(root / sub / c / f"{i:05d}.png", _arr(n)); n += 1
        if videos:
            for clip in range(3):
                for fr in range(4):
                    _save(root / "videos" / c / f"clip{clip}" / f"{fr:03d}.png", _arr(n)); n += 1
    return root


# --------------------------------------------------------------------------- one test per layout

def test_layouts_listed():
    assert list_layouts() == ["fer2013-folders", "fer2013-csv", "ferplus", "ckplus", "rafdb", "rafdb-compound",
                              "dfew", "imagefolder", "parquet"]  # the order --help and error lines list them


def test_fer2013_folders(tmp_path):
    root = fer_folders(tmp_path / "fer")
    assert detect_layout(root) == "fer2013-folders"
    r = ingest(root, IngestConfig(seed=0))
    assert r.layout == "fer2013-folders" and r.dataset == "fer2013" and r.label_set.name == "fer2013"
    train_val = _rows(r, "train") + _rows(r, "val")
    test = _rows(r, "test")
    assert len(train_val) == 28 and len(test) == 15
    assert {x["orig_split"] for x in train_val} == {"Training"}
    assert {x["orig_split"] for x in test} == {"PublicTest", "PrivateTest"}
    assert [x["source_path"] for x in test if x["leak"]] == ["test/happy/PrivateTest_dup.jpg"]
    assert r.duplicates["test_rows_leaked_by_orig_split"] == {"PrivateTest": 1}
    assert all(x["image_format"] == "jpeg" and x["channels"] == 1 and x["width"] == 12 for x in train_val)
    assert all(x["label_id"] == BASIC7.index(x["label"]) for x in train_val + test)
    # original bytes kept: the stored JPEG is the file on disk
    first = test[0]
    assert first["image"] == (root / first["source_path"]).read_bytes()


def test_fer2013_csv(tmp_path):
    path = fer_csv(tmp_path / "csv", bad_row=True)
    assert detect_layout(path) == "fer2013-csv" and detect_layout(path.parent) == "fer2013-csv"
    r = ingest(path, IngestConfig(seed=0))
    rows = _all(r)
    assert len(rows) == 28 and len(_rows(r, "test")) == 6
    # csv class order: 0 angry ... 6 neutral; the manifest uses the fer2013 set (neutral = 4)
    row6 = next(x for x in rows if x["source_path"] == "fer2013.csv#6")
    assert row6["label"] == FER2013_CSV_ORDER[6] == "neutral" and row6["label_id"] == 4
    arr, fmt = images.decode(row6["image"])
    assert fmt == "png" and arr.shape == (6, 6) and (arr == _arr(6, 6)).all()
    assert [(x.source_path, x.kind) for x in r.rejects] == [("fer2013.csv#28", "bad-image")]
    assert "square" in r.rejects[0].reason


def test_ferplus_majority_rule():
    assert ferplus_majority(VOTES["happy"]) == ("happiness", None)
    assert ferplus_majority(VOTES["contempt"]) == ("contempt", None)
    assert ferplus_majority(VOTES["tie"]) == (None, "ferplus: no majority")
    assert ferplus_majority(VOTES["unknown"]) == (None, "ferplus: unknown")
    assert ferplus_majority(VOTES["nf"]) == (None, "ferplus: not a face")
    # single votes are dropped before the >50% test: 5 of 9 raw votes, but 5 of 8 after dropping
    assert ferplus_majority([5, 1, 0, 3, 0, 0, 0, 0, 0, 0]) == ("neutral", None)
    assert ferplus_majority([4, 0, 0, 4, 0, 0, 0, 0, 0, 0]) == (None, "ferplus: no majority")


def test_ferplus_csv(tmp_path):
    path = ferplus_csv(tmp_path / "fp")
    assert detect_layout(path.parent) == "ferplus"
    r = ingest(path.parent, IngestConfig(seed=0))
    assert r.layout == "ferplus" and r.dataset == "ferplus" and r.label_set.name == "ferplus"
    rows = _all(r)
    assert len(rows) == 8  # 14 rows: 2 each of tie, unknown, not-a-face dropped
    assert sorted(r.dropped.items()) == [("ferplus: no majority", 2), ("ferplus: not a face (no image name)", 2),
                                         ("ferplus: unknown", 2)]
    assert {x["label"] for x in rows} == {"happy", "contempt"}
    assert all(len(x["ferplus_votes"]) == 10 for x in rows)
    # the same join through --ferplus-csv on the fer2013-csv layout
    r2 = ingest(path, IngestConfig(layout="fer2013-csv", ferplus_csv=str(path.parent / "fer2013new.csv")))
    assert sorted(x["sample_id"] for x in _all(r2)) == sorted(x["sample_id"] for x in rows)
    # a fer2013.csv under another name joins the same way
    other = path.parent / "icml_face_data.csv"
    other.write_bytes(path.read_bytes())
    r3 = ingest(other, IngestConfig(ferplus_csv=str(path.parent / "fer2013new.csv")))
    assert r3.layout == "ferplus" and len(_all(r3)) == 8


def test_ferplus_csv_misaligned(tmp_path):
    path = ferplus_csv(tmp_path / "fp")
    lines = (path.parent / "fer2013new.csv").read_text().splitlines()
    (path.parent / "fer2013new.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IngestError, match="same row order"):
        ingest(path.parent, IngestConfig())


def test_ferplus_parquet(tmp_path):
    root = shared_parquet(tmp_path / "shared")
    votes = []
    for split, n, usage in (("train", 21, "Training"), ("test", 7, "PublicTest")):
        for i in range(n):
            if split == "train" and i == 20:
                continue  # an image with no FER+ row
            v = VOTES["tie"] if i == 3 else VOTES["happy"]
            votes.append({"fer2013_source_path": f"{split}/{BASIC7[i % 7]}/{usage}_{i}.png",
                          **dict(zip(FERPLUS_VOTE_COLUMNS, v))})
    fp = tmp_path / "ferplus.parquet"
    pq.write_table(pa.Table.from_pylist(votes), fp)
    r = ingest(root, IngestConfig(layout="parquet", dataset="ferplus", ferplus_parquet=str(fp)))
    assert r.label_set.name == "ferplus" and "ferplus_votes" in r.tables["train"].column_names
    assert r.dropped == {"ferplus: no FER+ row for this image": 1, "ferplus: no majority": 2}
    assert len(_rows(r, "train") + _rows(r, "val")) == 21 - 2 and len(_rows(r, "test")) == 7 - 1
    assert {x["label"] for x in _all(r)} == {"happy"}


def test_ckplus_grouped_by_subject(tmp_path):
    root = ckplus(tmp_path / "ck")
    assert detect_layout(root) == "ckplus"
    r = ingest(root, IngestConfig(seed=1, val_fraction=0.25))
    assert set(r.tables) == {"train", "val", "test"}  # no official split: test carved out
    rows = _all(r)
    assert len(rows) == 40
    subj = {s: {x["subject"] for x in _rows(r, s)} for s in r.tables}
    assert not (subj["train"] & subj["test"]) and not (subj["train"] & subj["val"]) and not (subj["val"] & subj["test"])
    x = next(x for x in rows if x["source_path"].endswith("S010_001_00000008.png"))
    assert (x["subject"], x["sequence"], x["frame_index"]) == ("S010", "S010_001", 8)
    assert r.label_set.name == "ckplus"
    assert r.producer["splits"]["test"]["carved_from"].startswith("all rows")


def test_rafdb_basic(tmp_path):
    root = rafdb(tmp_path / "raf", missing=True)
    assert detect_layout(root) == "rafdb"
    r = ingest(root, IngestConfig())
    assert len(_rows(r, "test")) == 7 and len(_rows(r, "train") + _rows(r, "val")) == 14
    x = next(x for x in _all(r) if x["source_path"] == "Image/aligned/train_00001_aligned.jpg")
    assert x["label"] == "surprise" and x["label_id"] == 0 and x["channels"] == 3  # id 1 = surprise
    assert [(j.kind, j.source_path) for j in r.rejects] == [("missing", "Image/aligned/train_09999_aligned.jpg")]


def test_rafdb_compound_and_user_list(tmp_path):
    root = rafdb(tmp_path / "rafc", compound=True)
    assert detect_layout(root) == "rafdb-compound"
    r = ingest(root, IngestConfig())
    assert r.label_set.name == "rafdb-compound" and len(_all(r)) == 33
    names = [f"c{i}" for i in range(14)]  # the 14-class variant one seed used
    r2 = ingest(root, IngestConfig(layout="rafdb-compound", labels=tuple(names), label_set="raf14"))
    assert r2.label_set.names == tuple(names) and r2.label_set.name == "raf14"
    with pytest.raises(IngestError, match="outside 1..7"):
        ingest(root, IngestConfig(layout="rafdb"))


def test_dfew_clips(tmp_path):
    root = dfew(tmp_path / "dfew", missing=True)
    assert detect_layout(root) == "dfew"
    r = ingest(root, IngestConfig(val_fraction=0.3, seed=3))
    assert len(_rows(r, "test")) == 7 * 4
    clips = {s: {x["clip_id"] for x in _rows(r, s)} for s in r.tables}
    assert not (clips["train"] & clips["val"]) and len(clips["val"]) >= 1
    assert {x["orig_split"] for x in _rows(r, "test")} == {"set_1:test"}
    x = next(x for x in _all(r) if x["source_path"] == "Clip/clip_224x224_16f/00002/00003.jpg")
    assert (x["clip_id"], x["frame_index"], x["label"]) == ("00002", 3, "sad")  # id 2 = sad
    assert [j.kind for j in r.rejects] == ["missing"]
    with pytest.raises(IngestError, match="fold 2"):
        ingest(root, IngestConfig(fold=2))


def test_imagefolder_split_dirs_skips_videos(tmp_path):
    root = imagefolder(tmp_path / "synth", videos=True)
    assert detect_layout(root) == "imagefolder"
    r = ingest(root, IngestConfig(layout="imagefolder", dataset="synth"))
    assert r.label_set.name == "synth"
    assert len(_rows(r, "test")) == 7 and len(_rows(r, "train") + _rows(r, "val")) == 28
    assert any("videos" in n for n in r.notes)
    # the clips on their own: a flat <class>/<clip>/ tree, grouped by clip in every split
    rv = ingest(root / "videos", IngestConfig(layout="imagefolder", dataset="synth", val_fraction=0.2))
    clips = {s: {x["clip_id"] for x in _rows(rv, s)} for s in rv.tables}
    assert set(rv.tables) == {"train", "val", "test"}
    assert not (clips["train"] & clips["test"]) and not (clips["train"] & clips["val"])
    assert all(x["frame_index"] in range(4) for x in _all(rv))


def test_imagefolder_flat_root_carves_stratified_test(tmp_path):
    root = imagefolder(tmp_path / "faces", split_dirs=False, per_class=10)
    r = ingest(root, IngestConfig(layout="imagefolder", test_fraction=0.2, val_fraction=0.25, seed=0))
    counts = {s: len(t) for s, t in r.tables.items()}
    assert counts == {"train": 42, "val": 14, "test": 14}
    per_class_test = {c: sum(x["label"] == c for x in _rows(r, "test")) for c in BASIC7}
    assert set(per_class_test.values()) == {2}  # stratified
    assert r.producer["splits"]["test"]["method"] == "StratifiedShuffleSplit over groups"


def test_parquet_layout(tmp_path):
    root = shared_parquet(tmp_path / "pq")
    assert detect_layout(root) == "parquet" and detect_layout(root / "train.parquet") == "parquet"
    r = ingest(root, IngestConfig(dataset="fer2013"))
    assert len(_rows(r, "test")) == 7 and len(_rows(r, "train") + _rows(r, "val")) == 21
    assert sum(x["leak"] for x in _rows(r, "test")) == 1
    assert {x["orig_split"] for x in _rows(r, "test")} == {"PublicTest"}
    src = pq.read_table(root / "train.parquet").to_pylist()[0]
    row = next(x for x in _all(r) if x["source_path"] == src["source_path"])
    assert row["image"] == src["image"]  # no re-encode


# --------------------------------------------------------------------------- splits

def test_val_comes_from_train_and_is_seeded(tmp_path):
    root = shared_parquet(tmp_path / "pq", n_train=70, n_test=14)
    a, b = ingest(root, IngestConfig(seed=5)), ingest(root, IngestConfig(seed=5))
    c = ingest(root, IngestConfig(seed=6))
    ids = lambda r, s: sorted(x["sample_id"] for x in _rows(r, s))  # noqa: E731
    assert ids(a, "val") == ids(b, "val") and ids(a, "val") != ids(c, "val")
    assert ids(a, "test") == ids(c, "test")  # the test split is never touched by the seed
    assert {x["orig_split"] for x in _rows(a, "val")} == {"Training"}
    assert sorted(x["label"] for x in _rows(a, "val")) == sorted(BASIC7)  # 10 % of 70, one per class
    assert a.producer["splits"]["val"]["carved_from"] == "the training split only"


def test_duplicates_stay_on_one_side_of_val(tmp_path):
    root = tmp_path / "dups"
    for c in BASIC7:
        for i in range(6):
            _save(root / "train" / c / f"{i}.png", _arr(BASIC7.index(c) * 10 + i % 3))  # each image twice
        _save(root / "test" / c / "0.png", _arr(BASIC7.index(c) * 10 + 0))
    r = ingest(root, IngestConfig(layout="imagefolder", val_fraction=0.3))
    train_h = {x["pixel_hash"] for x in _rows(r, "train")}
    assert not train_h & {x["pixel_hash"] for x in _rows(r, "val")}
    assert r.duplicates["groups"] == 21 and r.duplicates["test_rows_leaked"] == 7
    assert r.duplicates["redundant_within_train_val"] == 21


def test_holdout_fractions():
    labels = [c for c in "abcd" for _ in range(25)]
    mask, how = holdout(labels, [str(i) for i in range(100)], 0.2, seed=0)
    assert mask.sum() == 20 and how.startswith("StratifiedShuffleSplit")
    assert all(sum(m for m, y in zip(mask, labels) if y == c) == 5 for c in "abcd")
    mask0, how0 = holdout(labels, [str(i) for i in range(100)], 0.0, seed=0)
    assert not mask0.any() and how0 == "none"
    # groups that mix labels (subjects) go through StratifiedGroupKFold; no group straddles
    groups = [f"s{i // 10}" for i in range(100)]
    mixed = [("a", "b")[i % 2] for i in range(100)]
    m2, how2 = holdout(mixed, groups, 0.2, seed=0)
    assert "StratifiedGroupKFold" in how2
    assert all(len({m for m, g in zip(m2, groups) if g == s}) == 1 for s in set(groups))


# --------------------------------------------------------------------------- bad input

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # Pillow warns before we refuse
def test_bad_images_are_rejected_and_ingest_goes_on(tmp_path):
    root = imagefolder(tmp_path / "bad", per_class=3)
    good = (root / "train" / "angry" / "00000.png").read_bytes()
    (root / "train" / "angry" / "corrupt.png").write_bytes(b"this is not an image at all")
    (root / "train" / "angry" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "happy" / "empty.jpg").write_bytes(b"")
    (root / "train" / "sad" / "bomb.png").write_bytes(_bomb_png())
    (root / "train" / "sad" / "notes.txt").write_text("ignored: not an image extension")
    r = ingest(root, IngestConfig(layout="imagefolder"))
    reasons = {Path(j.source_path).name: j.reason for j in r.rejects}
    assert set(reasons) == {"corrupt.png", "truncated.png", "empty.jpg", "bomb.png"}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["corrupt.png"].startswith("cannot decode")
    assert reasons["truncated.png"].startswith("cannot decode")
    assert reasons["bomb.png"].startswith("too large")
    assert r.bad_images == 4 and len(_all(r)) == 21
    assert any("non-image" in n for n in r.notes)


def test_max_pixels_is_a_setting(tmp_path):
    root = imagefolder(tmp_path / "px", per_class=2)
    _save(root / "train" / "angry" / "big.png", _arr(7, size=20))  # 400 pixels
    r = ingest(root, IngestConfig(layout="imagefolder", max_pixels=144))  # the 12x12 ones pass
    assert [Path(j.source_path).name for j in r.rejects] == ["big.png"] and "20x20" in r.rejects[0].reason
    with pytest.raises(IngestError, match="every image was rejected"):
        ingest(root, IngestConfig(layout="imagefolder", max_pixels=100))


def test_unknown_class_folder_lists_known_ones(tmp_path):
    root = imagefolder(tmp_path / "cls", per_class=2)
    _save(root / "train" / "bored" / "0.png", _arr(99))
    with pytest.raises(IngestError) as e:
        ingest(root, IngestConfig(layout="imagefolder"))
    msg = str(e.value)
    assert "'bored'" in msg and "angry, disgust, fear, happy, neutral, sad, surprise" in msg and "--labels" in msg
    r = ingest(root, IngestConfig(layout="imagefolder", labels=(*BASIC7, "bored")))
    assert r.label_set.names[-1] == "bored" and r.label_set.name == "custom"


def test_aliases_and_case_map_onto_the_label_set(tmp_path):
    root = tmp_path / "alias"
    for i, c in enumerate(["Anger", "happiness", "SAD", "surprised", "neutral", "fear", "disgust"]):
        for j in range(3):
            _save(root / c / f"{j}.png", _arr(i * 10 + j))
    r = ingest(root, IngestConfig(layout="imagefolder", val_fraction=0))
    assert {x["label"] for x in _all(r)} == set(BASIC7)


def test_missing_path_and_unrecognised_layout_name_the_layouts(tmp_path):
    with pytest.raises(IngestError, match="layouts: .*fer2013-folders.*parquet"):
        ingest(tmp_path / "nope", IngestConfig())
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("hello")
    with pytest.raises(IngestError, match="cannot tell the layout.*imagefolder"):
        ingest(tmp_path / "junk", IngestConfig())
    with pytest.raises(IngestError, match="unknown layout 'kaggle'.*dfew"):
        ingest(tmp_path / "junk", IngestConfig(layout="kaggle"))


def test_ferplus_options_need_their_layout(tmp_path):
    root = imagefolder(tmp_path / "x", per_class=2)
    with pytest.raises(IngestError, match="--ferplus-csv"):
        ingest(root, IngestConfig(layout="imagefolder", ferplus_csv="fer2013new.csv"))


# --------------------------------------------------------------------------- writing and the CLI

def test_schema_round_trip_and_stale_split_removed(tmp_path):
    root = shared_parquet(tmp_path / "pq")
    r = ingest(root, IngestConfig(dataset="fer2013"))
    written, removed = write_result(r, tmp_path / "m" / "fer")
    assert set(written) == {"train", "val", "test"} and removed == []
    for s, p in written.items():
        t, ls = read_manifest(p)
        assert ls.name == "fer2013" and t.num_rows == r.tables[s].num_rows
        assert set(t.column("split").to_pylist()) == {s}
    r0 = ingest(root, IngestConfig(dataset="fer2013", val_fraction=0))
    written, removed = write_result(r0, tmp_path / "m" / "fer")
    assert set(written) == {"train", "test"} and [p.name for p in removed] == ["fer_val.parquet"]


def test_cli_ingest_and_stats(tmp_path):
    root = imagefolder(tmp_path / "synth", videos=True)
    (root / "train" / "sad" / "broken.png").write_bytes(b"\x89PNG broken")
    out = tmp_path / "manifests" / "demo"
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(root), "--layout", "imagefolder", "--dataset", "synth", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "rejected 1 image" in res.output and "videos" in res.output
    # the note's command is one line, copyable (it was wrapped at 160 columns mid-command)
    note = next(ln for ln in res.output.splitlines() if ln.startswith("note: skipped videos/"))
    assert f"`pipeline ingest {root / 'videos'} --layout imagefolder`" in note
    assert (tmp_path / "manifests" / "demo_rejects.csv").read_text().count("broken.png") == 1
    paths = [str(out) + f"_{s}.parquet" for s in ("train", "val", "test")]
    assert all(Path(p).exists() for p in paths)
    res = runner.invoke(app, ["stats", *paths])
    assert res.exit_code == 0, res.output
    assert "angry" in res.output and "class counts" in res.output
    # --strict: rejects fail the run and nothing is written
    res = runner.invoke(app, ["ingest", str(root), "--layout", "imagefolder", "--out", str(tmp_path / "strict"),
                              "--strict"])
    assert res.exit_code == 1 and "--strict" in res.output
    assert not (tmp_path / "strict_train.parquet").exists()


def test_cli_errors_are_messages_not_tracebacks(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and "layouts:" in res.output and "Traceback" not in res.output
    root = imagefolder(tmp_path / "c", per_class=2)
    _save(root / "train" / "bored" / "0.png", _arr(1))
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "y")])
    assert res.exit_code == 2 and "bored" in res.output
    res = runner.invoke(app, ["ingest", str(root), "--out", str(tmp_path / "y"),
                              "--labels", ",".join((*BASIC7, "bored"))])
    assert res.exit_code == 0, res.output
