"""The manifest contract: schema round trip, version checks, atomic writes, labels, presets, queries."""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import hub, images, labels, manifest, query
from features.schema import CORE, GROUPS, META_VERSION, SCHEMA_VERSION, describe, groups_of, schema_for


def _rows(n=12, dup_test=(), seed=0):
    ls = labels.get_label_set("fer2013")
    rng = np.random.RandomState(seed)
    arrays = [(rng.rand(8, 8) * 255).astype("uint8") for _ in range(n)]
    for test_i, train_i in dup_test:
        arrays[test_i] = arrays[train_i]
    rows = []
    for i, a in enumerate(arrays):
        split = "test" if i >= n - 3 else "train"
        rows.append(dict(
            sample_id=manifest.sample_id("t", f"img{i}.png"), dataset="t", split=split, orig_split=None,
            source_path=f"img{i}.png", label=ls.names[i % 7], label_id=i % 7, label_set="fer2013",
            image=images.encode(a), image_format="png", width=8, height=8, channels=1,
            pixel_hash=images.pixel_hash(a), leak=split == "test" and any(t == i for t, _ in dup_test)))
    return rows, ls


def test_round_trip(tmp_path):
    rows, ls = _rows()
    path = manifest.write_manifest(manifest.to_table(rows), tmp_path / "m.parquet", ls, {"cmd": "test"})
    table, ls2 = manifest.read_manifest(path)
    assert ls2 == ls
    assert table.num_rows == len(rows)
    assert table.column("sample_id").to_pylist() == [r["sample_id"] for r in rows]
    assert table.schema.equals(schema_for(), check_metadata=False)
    assert pq.read_schema(path).metadata[META_VERSION] == SCHEMA_VERSION.encode()
    assert manifest.producer_of(path) == {"cmd": "test"}
    arr, fmt = images.decode(table.column("image")[0].as_py())
    assert fmt == "png" and images.pixel_hash(arr) == rows[0]["pixel_hash"]


def test_groups_round_trip(tmp_path):
    rows, ls = _rows(4)
    rows[0]["caption"] = "a person with an open mouth"
    t = manifest.to_table(rows, groups=("caption", "enhance"))
    path = manifest.write_manifest(t, tmp_path / "g.parquet", ls)
    schema, _ = manifest.open_manifest(path)
    assert groups_of(schema) == ["enhance", "caption"]
    tab, _ = manifest.read_manifest(path, columns=["sample_id", "caption"])
    assert tab.column("caption").to_pylist()[:2] == ["a person with an open mouth", None]
    with pytest.raises(manifest.ManifestError, match="pipeline caption"):
        manifest.read_manifest(path, columns=["vqa_answers"])


def test_every_column_documented():
    assert all(c.doc for c in CORE) and all(c.doc for cols in GROUPS.values() for c in cols)
    assert "sample_id" in describe() and "caption" in describe()


def test_version_mismatch_names_the_command(tmp_path):
    rows, ls = _rows(3)
    path = manifest.write_manifest(manifest.to_table(rows), tmp_path / "m.parquet", ls)
    t = pq.read_table(path)
    meta = dict(t.schema.metadata)
    meta[META_VERSION] = b"0"
    pq.write_table(t.replace_schema_metadata(meta), path)
    with pytest.raises(manifest.ManifestError, match="pipeline ingest"):
        manifest.open_manifest(path)


def test_foreign_parquet_and_missing_file(tmp_path):
    p = tmp_path / "foreign.parquet"
    pq.write_table(pa.table({"a": [1, 2]}), p)
    with pytest.raises(manifest.ManifestError, match="pipeline ingest"):
        manifest.open_manifest(p)
    with pytest.raises(manifest.ManifestError, match="does not exist"):
        manifest.open_manifest(tmp_path / "nope.parquet")
    junk = tmp_path / "junk.parquet"
    junk.write_bytes(b"not parquet at all")
    with pytest.raises(manifest.ManifestError, match="not a readable Parquet") as e:
        manifest.open_manifest(junk)
    # a CSV or JSON passed by mistake is not told only to re-create its "manifest"
    assert "a manifest is the Parquet file `pipeline ingest` or a stage writes: pass one" in str(e.value)


def test_feature_file_passed_as_manifest_says_where_it_goes(tmp_path):
    import numpy as np

    from features.encoders import features_table, write_features

    feat = write_features(features_table(["a", "b"], np.zeros((2, 4), np.float32)), tmp_path / "f.parquet",
                          {"encoder": "test", "dim": 4})
    with pytest.raises(manifest.ManifestError, match="a feature file from `pipeline embed`") as e:
        manifest.open_manifest(feat)
    assert "--image-features or --text-features" in str(e.value)


def test_wrong_column_type_refused(tmp_path):
    rows, ls = _rows(3)
    t = manifest.to_table(rows)
    bad = t.set_column(t.schema.get_field_index("label_id"), "label_id", pa.array(["0", "1", "2"], pa.string()))
    with pytest.raises(manifest.ManifestError, match="label_id"):
        manifest.write_manifest(bad, tmp_path / "bad.parquet", ls)


def test_atomic_write_leaves_old_file_on_crash(tmp_path):
    rows, ls = _rows(3)
    path = manifest.write_manifest(manifest.to_table(rows), tmp_path / "m.parquet", ls)
    before = path.read_bytes()

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half a file")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        manifest.atomic_write_bytes(path, crash)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["m.parquet"]  # no temp file left behind


def test_sample_id_stable():
    assert manifest.sample_id("fer2013", "train/angry/x.jpg") == manifest.sample_id("fer2013", "train/angry/x.jpg")
    assert manifest.sample_id("d", "clip", 0) != manifest.sample_id("d", "clip", 1)


def test_label_sets_as_specified():
    assert labels.get_label_set("fer2013").names == labels.BASIC7
    assert len(labels.get_label_set("ferplus")) == 8 and "contempt" in labels.get_label_set("ferplus").names
    ck = labels.get_label_set("ckplus")
    assert ck.names == ("anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise")
    assert "neutral" not in ck.names
    assert len(labels.get_label_set("rafdb-compound")) == 11
    assert labels.get_label_set("dfew").names[0] == "happy"
    with pytest.raises(KeyError, match="known"):
        labels.get_label_set("affectnet")
    custom = labels.custom_label_set([f"c{i}" for i in range(14)], "rafdb-compound14")
    assert len(custom) == 14 and labels.LabelSet.from_json(custom.to_json()) == custom


def test_presets_on_fer2013():
    ls = labels.get_label_set("fer2013")
    names5, idx5 = labels.get_preset(5).apply(ls)
    assert names5 == ("angry", "happy", "neutral", "sad", "surprise")
    m = dict(zip(ls.names, (names5[i] for i in idx5)))
    assert m["disgust"] == "angry" and m["fear"] == "sad" and m["happy"] == "happy"
    names4, idx4 = labels.get_preset(4).apply(ls)
    m4 = dict(zip(ls.names, (names4[i] for i in idx4)))
    assert m4 == {"angry": "negative", "disgust": "negative", "fear": "negative", "happy": "positive",
                  "neutral": "neutral", "sad": "negative", "surprise": "surprise"}
    names2, idx2 = labels.get_preset(2).apply(ls)
    m2 = dict(zip(ls.names, (names2[i] for i in idx2)))
    assert {k for k, v in m2.items() if v == "positive"} == {"happy", "neutral", "surprise"}
    assert labels.get_preset(7).apply(ls) == (ls.names, list(range(7)))


def test_presets_keep_dataset_spelling_and_refuse_non7():
    names5, idx5 = labels.get_preset(5).apply(labels.get_label_set("dfew"))
    assert names5 == ("happy", "sad", "neutral", "angry", "surprise")
    with pytest.raises(ValueError, match="7-class"):
        labels.get_preset(5).apply(labels.get_label_set("ckplus"))
    with pytest.raises(KeyError, match="known"):
        labels.get_preset(3)


def test_cross_map_ckplus_to_fer2013():
    ck, fer = labels.get_label_set("ckplus"), labels.get_label_set("fer2013")
    m = labels.cross_map(ck, fer)
    named = {ck.names[i]: (fer.names[j] if j is not None else None) for i, j in enumerate(m)}
    assert named == {"anger": "angry", "contempt": None, "disgust": "disgust", "fear": "fear",
                     "happy": "happy", "sadness": "sad", "surprise": "surprise"}
    # contempt survives when the target set has it
    assert labels.cross_map(ck, labels.get_label_set("ferplus"))[1] == 1


def test_queries(tmp_path):
    rows, ls = _rows(12, dup_test=((10, 0), (11, 0)))
    path = manifest.write_manifest(manifest.to_table(rows), tmp_path / "m.parquet", ls)
    counts = query.class_counts(path)
    assert sum(c["n"] for c in counts) == 12
    assert {c["split"] for c in counts} == {"train", "test"}
    two = query.class_counts(path, preset=2)
    assert {c["class"] for c in two} == {"positive", "negative"}
    dups = query.duplicates(path).to_pylist()
    assert len(dups) == 1 and dups[0]["copies"] == 3 and dups[0]["splits"] == ["test", "train"]
    s = query.duplicate_summary(path)
    assert s == {"groups": 1, "redundant_copies": 2, "groups_train_test": 1,
                 "groups_conflicting_labels": 1, "test_rows_leaked": 2}
    assert len(query.leaked_ids(path)) == 2
    assert query.select_split(path, "test", ["sample_id"]).num_rows == 3


def test_decode_rejects_bad_bytes():
    with pytest.raises(images.BadImage, match="empty"):
        images.decode(b"")
    with pytest.raises(images.BadImage, match="cannot decode"):
        images.decode(b"GIF89a not really")
    good = images.encode(np.zeros((40, 40), "uint8"))
    with pytest.raises(images.BadImage, match="cannot decode"):
        images.decode(good[: len(good) // 2])
    with pytest.raises(images.BadImage, match="too large"):
        images.decode(good, max_pixels=100)


def test_hub_resolve_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(hub.WeightsNotFound, match="hf download Salesforce/blip"):
        hub.resolve("Salesforce/blip-image-captioning-base", "BLIP captioner")
    with pytest.raises(hub.WeightsNotFound, match="no file or folder"):
        hub.resolve(str(tmp_path / "ckpt.pth"), "SwinIR")
    snap = tmp_path / "cache" / "models--org--m" / "snapshots" / "abc"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    assert hub.resolve("org/m", "x") == snap
    d = tmp_path / "local"
    d.mkdir()
    with pytest.raises(hub.WeightsNotFound, match="lacks"):
        hub.resolve(str(d), "x")


# ---- features.labels, value by value ------------------------------------------------------

def test_vote_columns_map_onto_each_label_set_by_canonical_name():
    from features.labels import FERPLUS_VOTE_COLUMNS, get_label_set, vote_columns_in

    assert FERPLUS_VOTE_COLUMNS == ("neutral", "happiness", "surprise", "sadness", "anger", "disgust",
                                    "fear", "contempt", "unknown", "NF")
    # ferplus: angry contempt disgust fear happy neutral sad surprise
    assert vote_columns_in(get_label_set("ferplus")) == [5, 4, 7, 6, 0, 2, 3, 1, None, None]
    # fer2013: angry disgust fear happy neutral sad surprise (no contempt)
    assert vote_columns_in(get_label_set("fer2013")) == [4, 3, 6, 5, 0, 1, 2, None, None, None]
    # ckplus has no neutral: its column maps nowhere
    assert vote_columns_in(get_label_set("ckplus"))[0] is None


def test_label_set_basics_and_messages():
    from features.labels import (LABEL_SETS, LabelSet, custom_label_set, get_label_set, get_preset,
                                 register_label_set)

    ck = get_label_set("ckplus")
    assert ck.canonical == ("angry", "contempt", "disgust", "fear", "happy", "sad", "surprise")
    assert ck.index("sadness") == 5
    with pytest.raises(KeyError) as e:
        ck.index("joy")
    assert str(e.value) == ("\"'joy' is not a class of label set 'ckplus'; known: anger, contempt, "
                            "disgust, fear, happy, sadness, surprise\"")
    with pytest.raises(ValueError, match="label set 'x' repeats a class name"):
        LabelSet("x", ("a", "a"))
    with pytest.raises(KeyError) as e:
        get_label_set("nope")
    assert f"known: {', '.join(sorted(LABEL_SETS))}" in str(e.value)
    with pytest.raises(KeyError) as e:
        get_preset("9")
    assert "unknown preset '9'; known: 7, 5, 4, 2" in str(e.value)
    c = custom_label_set(["Joy", "anger"])
    assert (c.name, c.names, c.doc, c.canonical) == ("custom", ("Joy", "anger"), "user-supplied",
                                                     ("happy", "angry"))
    assert register_label_set(get_label_set("fer2013")) is get_label_set("fer2013")  # same: fine
    with pytest.raises(ValueError, match="label set 'fer2013' already registered with other names"):
        register_label_set(LabelSet("fer2013", ("a", "b")))
    assert LABEL_SETS["fer2013"].names[0] == "angry"  # the refused one did not replace it
    fresh = register_label_set(LabelSet("test-only-set", ("happy", "sad")))
    try:
        assert LABEL_SETS["test-only-set"] is fresh
    finally:
        del LABEL_SETS["test-only-set"]


def test_label_set_json_round_trip_reuses_known_sets():
    from features.labels import LabelSet, get_label_set

    fer = get_label_set("fer2013")
    assert LabelSet.from_json(fer.to_json()) is fer
    other = LabelSet.from_json('{"name": "fer2013", "names": ["a", "b"]}')  # same name, other names
    assert other is not fer and other.names == ("a", "b")
    unknown = LabelSet.from_json('{"name": "mine", "names": ["happy", "x"]}')
    assert unknown.names == ("happy", "x") and unknown.canonical == ("happy", None)


def test_a_collection_with_a_provenance_file_is_not_read_as_a_manifest(tmp_path):
    """wild_dev.parquet was told to be re-created with `pipeline ingest`: an invitation to ingest
    (and train on) a predict-only set."""
    (tmp_path / "PROVENANCE.md").write_text("development and reporting only\n")
    p = tmp_path / "wild_dev.parquet"
    pq.write_table(pa.table({"image": [b"x"], "label": ["happy"]}), p)
    with pytest.raises(manifest.ManifestError, match="a photo collection with its own rules") as e:
        manifest.open_manifest(p)
    assert "make wild-folder" in str(e.value) and "pipeline ingest" not in str(e.value)
