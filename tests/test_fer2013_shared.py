"""The real FER2013 (+ FER+) from ../shared/data/fer2013: counts, leaks and duplicates against
its PROVENANCE.md. Skips when the shared data is absent."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.commands.stats import collect
from pipeline.ingest import IngestConfig, ingest, write_result

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"
pytestmark = [
    pytest.mark.shared,
    pytest.mark.slow,
    pytest.mark.skipif(not (DATA / "train.parquet").exists(), reason=f"shared FER2013 not found at {DATA}"),
]

CLASSES = ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
# PROVENANCE.md "Verified counts"
TRAINING = (3995, 436, 4097, 7215, 4965, 4830, 3171)
PUBLIC = (467, 56, 496, 895, 607, 653, 415)
PRIVATE = (491, 55, 528, 879, 626, 594, 416)


@pytest.fixture(scope="module")
def fer(tmp_path_factory):
    result = ingest(DATA, IngestConfig(layout="parquet", dataset="fer2013"))
    written, _ = write_result(result, tmp_path_factory.mktemp("fer") / "fer")
    return result, written


def test_rows_and_per_class_counts(fer):
    result, written = fer
    n = {s: t.num_rows for s, t in result.tables.items()}
    assert n["train"] + n["val"] == 28_709 and n["test"] == 7_178
    assert abs(n["val"] / 28_709 - 0.1) < 0.002
    rep = collect(list(written.values()), "7", ("orig_split",))
    got = {r["orig_split"]: tuple(r["counts"][c] for c in CLASSES) for r in rep["counts"]}
    assert got == {"Training": TRAINING, "PublicTest": PUBLIC, "PrivateTest": PRIVATE}


def test_leaks_and_duplicates_match_provenance(fer):
    result, _ = fer
    d = result.duplicates
    assert d["test_rows_leaked"] == 568
    assert d["test_rows_leaked_by_orig_split"] == {"PrivateTest": 288, "PublicTest": 280}
    assert (d["groups"], d["redundant_copies"], d["groups_train_test"], d["groups_conflicting_labels"]) == (
        1516, 1853, 531, 57)
    assert (d["redundant_within_train_val"], d["redundant_within_test"]) == (1236, 86)
    # validation is grouped by pixels: no val image has a copy in train
    train = set(result.tables["train"].column("pixel_hash").to_pylist())
    assert not train & set(result.tables["val"].column("pixel_hash").to_pylist())


def test_pixel_hash_equals_provenance_pixel_sha1(fer):
    result, _ = fer
    ours = {}
    for t in result.tables.values():
        ours.update(zip(t.column("source_path").to_pylist(), t.column("pixel_hash").to_pylist()))
    for f in ("train.parquet", "test.parquet"):
        src = pq.read_table(DATA / f, columns=["source_path", "pixel_sha1"])
        for p, h in zip(src.column("source_path").to_pylist(), src.column("pixel_sha1").to_pylist()):
            assert ours[p] == h


def test_ferplus_manifest():
    r = ingest(DATA, IngestConfig(layout="parquet", dataset="ferplus", ferplus_parquet=str(DATA / "ferplus.parquet")))
    n = {s: t.num_rows for s, t in r.tables.items()}
    # PROVENANCE.md's majority counts less null, less the 4 labelled rows with no matched image
    assert n["train"] + n["val"] == 25_057 and n["test"] == 6_351
    assert r.dropped == {"ferplus: no majority": 4_200, "ferplus: unknown": 99, "ferplus: not a face": 3,
                         "ferplus: no FER+ row for this image": 177}
    counts = {}
    for t in r.tables.values():
        for lab in t.column("label").to_pylist():
            counts[lab] = counts.get(lab, 0) + 1
    # PROVENANCE.md majority table summed over usages, less the 4 unmatched rows
    assert counts["contempt"] == 119 + 13 + 16 and counts["disgust"] == 119 + 24 + 18
    assert sum(counts.values()) == 31_408


def test_majority_rule_reproduces_ferplus_label_column():
    from features.labels import FERPLUS_VOTE_COLUMNS
    from pipeline.layouts.fer_files import ferplus_majority

    t = pq.read_table(DATA / "ferplus.parquet", columns=[*FERPLUS_VOTE_COLUMNS, "ferplus_label"])
    votes = zip(*(t.column(c).to_pylist() for c in FERPLUS_VOTE_COLUMNS))
    ours = [ferplus_majority(v)[0] for v in votes]
    assert ours == t.column("ferplus_label").to_pylist()
