"""`pipeline balance`: oversampling a tiny imbalanced manifest built from the synthetic faces."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from typer.testing import CliRunner

from features.images import decode, encode, pixel_hash
from features.labels import get_label_set
from features.manifest import read_manifest, sample_id, to_table, write_manifest
from pipeline.balance import (
    BalanceConfig,
    BalanceError,
    balance_features,
    balance_manifest,
    check_dims,
    oversample,
    recover_parents,
)
from pipeline.cli import app
from pipeline.synth import synth_face

LS = get_label_set("synth")
COUNTS = (24, 7, 12, 30, 18, 14, 9)  # deliberately imbalanced, in BASIC7 order


def _rows(counts=COUNTS, size=16, split="train", channels=1):
    rows = []
    for c, n in enumerate(counts):
        for i in range(n):
            pix = synth_face(c, i, seed=3, size=size)
            if channels == 3:
                pix = np.repeat(pix[..., None], 3, axis=2)
            tag = "" if (split, size, channels) == ("train", 16, 1) else f"{split}-{size}px-{channels}ch/"
            src = f"{tag}{LS.names[c]}/{i}.png"  # sample_ids stay unique when rows are mixed
            rows.append({
                "sample_id": sample_id("synth", src), "dataset": "synth", "split": split, "source_path": src,
                "label": LS.names[c], "label_id": c, "label_set": LS.name, "image": encode(pix),
                "image_format": "png", "width": size, "height": size, "channels": channels,
                "pixel_hash": pixel_hash(pix),
            })
    return rows


@pytest.fixture
def manifest(tmp_path):
    path = tmp_path / "train.parquet"
    write_manifest(to_table(_rows()), path, LS, {"test": True})
    return path


def _synthetic(table: pa.Table) -> pa.Table:
    return table.filter(table.column("synthetic"))


@pytest.mark.parametrize("method", ["borderline", "smote", "random"])
def test_each_method_reaches_target_with_valid_parents(manifest, method):
    table, ls = read_manifest(manifest)
    out, rep = balance_manifest(table, ls, BalanceConfig(method=method, seed=0, target=30, k_neighbors=3,
                                                         m_neighbors=6))
    labels = out.column("label_id").to_pylist()
    counts = [labels.count(c) for c in range(7)]
    if rep["shortfalls"]:  # BorderlineSMOTE may legitimately stop short; then it must say so
        assert method == "borderline"
        short = {c["label"] for c in rep["classes"] if c["after"] < c["target"]}
        assert all(any(lab in m for lab in short) for m in rep["shortfalls"])
        assert all("danger" in m for m in rep["shortfalls"])
    else:
        assert counts == [30] * 7
    assert out.slice(0, table.num_rows).equals(table), "input rows must come first, unchanged"

    syn = _synthetic(out)
    assert syn.num_rows == out.num_rows - table.num_rows == rep["rows_new"] > 0
    real = {sid: lab for sid, lab in zip(table.column("sample_id").to_pylist(), table.column("label_id").to_pylist())}
    for sid, lab, parents in zip(syn.column("sample_id").to_pylist(), syn.column("label_id").to_pylist(),
                                 syn.column("parent_ids").to_pylist()):
        assert sid not in real
        assert 1 <= len(parents) <= 2 and (len(parents) == 1) == (method == "random")
        assert all(real[p] == lab for p in parents), "parents are real rows of the same class"
    assert len(set(out.column("sample_id").to_pylist())) == out.num_rows
    assert rep["parents_exact"]


def test_synthetic_pixels_lie_between_their_parents(manifest):
    table, ls = read_manifest(manifest)
    out, _ = balance_manifest(table, ls, BalanceConfig(method="smote", seed=1, k_neighbors=3))
    img = {sid: decode(b)[0].astype(float) for sid, b in zip(out.column("sample_id").to_pylist(),
                                                             out.column("image").to_pylist())}
    syn = _synthetic(out)
    for sid, parents, h in zip(syn.column("sample_id").to_pylist(), syn.column("parent_ids").to_pylist(),
                               syn.column("pixel_hash").to_pylist()):
        s, a, b = img[sid], img[parents[0]], img[parents[1]]
        # rounding to uint8 moves each pixel by <= 0.5 from the exact interpolation
        assert np.all(s >= np.minimum(a, b) - 0.51) and np.all(s <= np.maximum(a, b) + 0.51)
        assert h == pixel_hash(img[sid].astype(np.uint8))


def test_recover_parents_finds_the_true_pair():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(40, 12)).astype(np.float32)
    y = np.repeat([0, 1], 20)
    a = 3
    # SMOTE's second parent is one of a's k nearest same-class rows; take the 4th of 5
    b = int(np.argsort(np.linalg.norm(X[:20] - X[a], axis=1))[4])
    s = X[a] + 0.3 * (X[b] - X[a])
    parents, miss = recover_parents(X, y, s[None], np.array([0]), k=5)
    assert sorted(parents[0]) == [a, b] and parents[0][0] == a  # nearer parent first
    assert miss < 1e-5


@pytest.mark.parametrize("method", ["borderline", "smote"])
def test_parent_search_agrees_with_replay(manifest, monkeypatch, method):
    """The geometric fallback (for an imblearn whose draws cannot be replayed) finds the same
    parents as the replay of imblearn's draws, up to rows with identical pixels."""
    import pipeline.balance as bal

    table, ls = read_manifest(manifest)
    X = bal.decode_matrix(table.column("image").to_pylist(), (16, 16, 1))
    y = table.column("label_id").to_numpy()
    cfg = BalanceConfig(method=method, seed=2, target=30, k_neighbors=3, m_neighbors=6)
    replayed = oversample(X, y, ls, cfg)
    assert replayed.parents_by == "replayed" and replayed.parents_exact
    monkeypatch.setattr(bal, "_replay_parents", lambda *a: (None, np.inf, "failed"))
    searched = oversample(X, y, ls, cfg)
    assert searched.parents_by == "searched" and searched.parents_exact
    assert np.array_equal(searched.vectors, replayed.vectors)
    same = [np.array_equal(np.sort(X[p], 0), np.sort(X[q], 0))
            for p, q in zip(replayed.parents, searched.parents)]
    assert all(same)


def test_same_seed_same_output_other_seed_differs(manifest, tmp_path):
    runner = CliRunner()
    for name in ("a.parquet", "b.parquet"):
        r = runner.invoke(app, ["balance", "--in", str(manifest), "--out", str(tmp_path / name),
                                "--seed", "5", "--k-neighbors", "3", "--m-neighbors", "6"])
        assert r.exit_code == 0, r.output
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    table, ls = read_manifest(manifest)
    one, _ = read_manifest(tmp_path / "a.parquet")
    assert _synthetic(one).num_rows > 0
    other, _ = balance_manifest(table, ls, BalanceConfig(method="borderline", seed=6, k_neighbors=3, m_neighbors=6))
    assert not _synthetic(other).column("image").equals(_synthetic(one).column("image"))


def test_refuses_val_and_test_rows(tmp_path):
    path = tmp_path / "mixed.parquet"
    write_manifest(to_table(_rows() + _rows((3,) * 7, split="val") + _rows((2,) * 7, split="test")), path, LS)
    r = CliRunner().invoke(app, ["balance", "--in", str(path), "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2
    assert "21 val" in r.output and "14 test" in r.output and "training split only" in r.output
    assert not (tmp_path / "o.parquet").exists()


def test_refuses_too_many_dims(tmp_path):
    with pytest.raises(BalanceError, match="110,592 dims, above --max-dims"):
        check_dims((192, 192, 3), 20_000)
    path = tmp_path / "big.parquet"
    write_manifest(to_table(_rows((3,) * 7, size=32, channels=3)), path, LS)  # 3,072 dims
    r = CliRunner().invoke(app, ["balance", "--in", str(path), "--out", str(tmp_path / "o.parquet"),
                                 "--max-dims", "3000"])
    assert r.exit_code == 2 and "--max-dims" in r.output and "feature space" in r.output


def test_refuses_mixed_sizes(tmp_path):
    path = tmp_path / "mixed.parquet"
    write_manifest(to_table(_rows((4,) * 7, size=16) + _rows((2,) * 7, size=20)), path, LS)
    table, ls = read_manifest(path)
    with pytest.raises(BalanceError, match="mixes image sizes"):
        balance_manifest(table, ls, BalanceConfig())


def test_shortfall_is_reported_when_borderline_finds_no_danger():
    # two well separated blobs: no row of class 1 has other-class neighbours, so no 'danger' rows
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(50, 1, (8, 4))]).astype(np.float32)
    y = np.array([0] * 30 + [1] * 8)
    ls = get_label_set("fer2013")
    r = oversample(X, y, ls, BalanceConfig(method="borderline", k_neighbors=3, m_neighbors=5))
    msgs = [s.message() for s in r.shortfalls]
    assert any("'disgust' reached 8 of its target 30" in m and "danger" in m for m in msgs)
    # classes absent from the input are named too
    assert any("'fear' reached 0 of its target 30" in m for m in msgs)
    smote = oversample(X, y, ls, BalanceConfig(method="smote", k_neighbors=3))
    assert smote.counts_after[1] == 30


def test_too_small_class_for_k_neighbors(manifest):
    table, ls = read_manifest(manifest)
    with pytest.raises(BalanceError, match="--k-neighbors 7"):
        balance_manifest(table, ls, BalanceConfig(method="smote", k_neighbors=7))


def test_strict_writes_nothing_on_shortfall(tmp_path):
    # class 'disgust' (id 1) absent: it cannot reach the target
    path = tmp_path / "m.parquet"
    write_manifest(to_table(_rows((10, 0, 10, 12, 10, 10, 10))), path, LS)
    r = CliRunner().invoke(app, ["balance", "--in", str(path), "--out", str(tmp_path / "o.parquet"),
                                 "--method", "smote", "--k-neighbors", "3", "--strict", "--json"])
    assert r.exit_code == 1 and not (tmp_path / "o.parquet").exists()
    assert "'disgust' reached 0 of its target 12" in r.output


def test_feature_space_writes_a_feature_file(manifest, tmp_path):
    from features.encoders import features_meta, features_table, write_features

    table, ls = read_manifest(manifest)
    ids = table.column("sample_id").to_pylist()
    vecs = np.random.default_rng(0).normal(size=(len(ids), 8)).astype(np.float32)
    vecs += table.column("label_id").to_numpy()[:, None]  # some class structure
    feat = tmp_path / "feat.parquet"
    write_features(features_table(ids, vecs), feat, {"encoder": "test", "dim": 8})
    out = tmp_path / "bal_feat.parquet"
    r = CliRunner().invoke(app, ["balance", "--in", str(manifest), "--out", str(out), "--features", str(feat),
                                 "--method", "smote", "--k-neighbors", "3", "--json"])
    assert r.exit_code == 0, r.output
    import pyarrow.parquet as pq

    ft = pq.read_table(out)
    assert ft.column_names[:2] == ["sample_id", "vector"] and ft.num_rows == 7 * 30
    labels = ft.column("label_id").to_pylist()
    assert [labels.count(c) for c in range(7)] == [30] * 7
    assert ft.column("sample_id").to_pylist()[:len(ids)] == ids
    np.testing.assert_array_equal(np.array(ft.column("vector").to_pylist()[:len(ids)], np.float32), vecs)
    meta = features_meta(out)
    assert meta["encoder"] == "test" and meta["balanced"]["method"] == "smote"
    syn_parents = [p for p, s in zip(ft.column("parent_ids").to_pylist(), ft.column("synthetic").to_pylist()) if s]
    assert syn_parents and all(len(p) == 2 and set(p) <= set(ids) for p in syn_parents)
    # and the library call matches what the CLI wrote
    lib, rep = balance_features(table, vecs, ls, BalanceConfig(method="smote", k_neighbors=3))
    assert lib.column("sample_id").equals(ft.column("sample_id")) and rep["rows_new"] == 7 * 30 - len(ids)


def test_cli_pixel_space_round_trip(manifest, tmp_path):
    out = tmp_path / "bal.parquet"
    r = CliRunner().invoke(app, ["balance", "--in", str(manifest), "--out", str(out), "--method", "smote",
                                 "--k-neighbors", "3", "--target", "25", "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])
    assert [c["after"] for c in rep["classes"]] == [max(n, 25) for n in COUNTS]
    table, ls = read_manifest(out)
    assert ls == LS and table.num_rows == sum(max(n, 25) for n in COUNTS)


def test_cli_bad_inputs_give_messages(tmp_path):
    runner = CliRunner()
    r = runner.invoke(app, ["balance", "--in", str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "o.parquet")])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["balance", "--in", str(tmp_path / "nope.parquet"), "--out", "o", "--method", "adasyn"])
    assert r.exit_code == 2 and "unknown --method 'adasyn'" in r.output


# --------------------------------------------------------------------------- values pinned
# imbalanced-learn called directly is the oracle for the new rows; a brute-force search over
# every same-class pair is the oracle for their parents.

def _blobs(counts=(30, 12, 9), dims=5, spread=1.2, seed=0):
    """Overlapping Gaussian classes (so BorderlineSMOTE finds 'danger' rows), float32."""
    rng = np.random.default_rng(seed)
    X = np.concatenate([rng.normal(c * 1.0, spread, (n, dims)) for c, n in enumerate(counts)]).astype(np.float32)
    y = np.repeat(np.arange(len(counts)), counts)
    return X, y


def _tiny_rows(counts, channels=1, split="train"):
    """Manifest rows of 2x2 random images (synth_face draws 16 px and up)."""
    rng = np.random.default_rng(len(counts) + channels)
    rows = []
    for c, n in enumerate(counts):
        for i in range(n):
            pix = rng.integers(0, 256, (2, 2, channels) if channels == 3 else (2, 2), dtype=np.uint8)
            src = f"{split}/{channels}ch/{LS.names[c]}/{i}.png"
            rows.append({"sample_id": sample_id("synth", src), "dataset": "synth", "split": split,
                         "source_path": src, "label": LS.names[c], "label_id": c, "label_set": LS.name,
                         "image": encode(pix), "image_format": "png", "width": 2, "height": 2,
                         "channels": channels, "pixel_hash": pixel_hash(pix)})
    return rows


def _imblearn(method, X, y, strategy, seed, k, m=10):
    from imblearn.over_sampling import SMOTE, BorderlineSMOTE, RandomOverSampler

    if method == "borderline":
        s = BorderlineSMOTE(sampling_strategy=strategy, random_state=seed, k_neighbors=k, m_neighbors=m,
                            kind="borderline-1")
    elif method == "smote":
        s = SMOTE(sampling_strategy=strategy, random_state=seed, k_neighbors=k)
    else:
        s = RandomOverSampler(sampling_strategy=strategy, random_state=seed)
    Xr, yr = s.fit_resample(X, y)
    return Xr[len(X):], yr[len(y):], s


def _true_parents(X, y, new_x, new_y):
    """For each new row, the same-class pair (a, b) whose segment holds it, nearer parent first,
    found by trying every pair (small inputs only), and the largest miss."""
    out, worst = [], 0.0
    for s, c in zip(new_x.astype(np.float64), new_y):
        members = np.flatnonzero(y == c)
        best = (np.inf, None)
        for a in members:
            for b in members:
                if a == b:
                    continue
                d = X[b].astype(np.float64) - X[a]
                u = float(np.clip(np.dot(s - X[a], d) / np.dot(d, d), 0, 1))
                miss = float(np.linalg.norm(s - X[a] - u * d))
                if miss < best[0]:
                    best = (miss, (a, b) if u <= 0.5 else (b, a))
        worst = max(worst, best[0])
        out.append(best[1])
    return np.array(out), worst


@pytest.mark.parametrize("method", ["borderline", "smote", "random"])
def test_oversample_rows_are_imblearns_own(method):
    X, y = _blobs()
    ls = get_label_set("fer2013")  # 7 classes, 3 present
    cfg = BalanceConfig(method=method, seed=4, target=25, k_neighbors=3, m_neighbors=6)
    r = oversample(X.astype(np.float64), y, ls, cfg)
    strategy = {1: 25, 2: 25}  # class 0 (30 rows) already above 25, classes 3..6 absent
    want_x, want_y, sampler = _imblearn(method, X, y, strategy, 4, 3, 6)
    assert r.vectors.dtype == np.float32 and r.labels.dtype == np.int64 and r.parents.dtype == np.int64
    np.testing.assert_array_equal(r.vectors, want_x)
    np.testing.assert_array_equal(r.labels, want_y)
    assert r.targets == {0: 30, 1: 25, 2: 25, 3: 25, 4: 25, 5: 25, 6: 25}
    assert r.counts_before == {0: 30, 1: 12, 2: 9}
    assert r.counts_after == {0: 30, 1: 12 + int((want_y == 1).sum()), 2: 9 + int((want_y == 2).sum())}
    assert sorted(r.seconds) == ["oversample", "parents"]
    if method == "random":
        src = sampler.sample_indices_[len(y):]
        np.testing.assert_array_equal(r.parents, np.stack([src, src], 1))
        assert (r.residual, r.parents_by, r.parents_exact) == (0.0, "copied", True)
        assert r.counts_after == {0: 30, 1: 25, 2: 25}
    else:
        want_p, miss = _true_parents(X, y, r.vectors, r.labels)
        np.testing.assert_array_equal(r.parents, want_p)
        assert miss < 1e-5 and 0.0 <= r.residual < 1e-5
        assert (r.parents_by, r.parents_exact) == ("replayed", True)
    assert r.counts_after == {0: 30, 1: 25, 2: 25}
    assert [s.message() for s in r.shortfalls] == [
        f"class {n!r} reached 0 of its target 25: the input has no rows of this class to interpolate from"
        for n in ("happy", "neutral", "sad", "surprise")]


@pytest.mark.parametrize("method", ["borderline", "smote"])
def test_parent_search_finds_the_brute_force_pairs(monkeypatch, method):
    import pipeline.balance as bal

    X, y = _blobs(seed=1)
    ls = get_label_set("fer2013")
    cfg = BalanceConfig(method=method, seed=0, target="max", k_neighbors=4, m_neighbors=5)
    monkeypatch.setattr(bal, "_replay_parents", lambda *a: (None, np.inf, "failed"))
    r = oversample(X, y, ls, cfg)
    assert r.parents_by == "searched" and r.parents_exact
    want_p, _ = _true_parents(X, y, r.vectors, r.labels)
    np.testing.assert_array_equal(r.parents, want_p)
    assert 0.0 <= r.residual < 1e-5


def test_replay_covers_a_class_that_needs_one_row_and_one_with_many():
    X, y = _blobs(counts=(40, 39, 6), seed=2)
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=3, k_neighbors=5))
    assert list(np.bincount(r.labels)) == [0, 1, 34]
    assert r.parents_by == "replayed" and r.parents_exact
    np.testing.assert_array_equal(r.parents, _true_parents(X, y, r.vectors, r.labels)[0])


def test_replay_over_more_than_one_chunk():
    # 2,100 new rows of one class: the replay's check runs in chunks of 2,048
    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0, 1, (2110, 3)), rng.normal(0.5, 1, (10, 3))]).astype(np.float32)
    y = np.repeat([0, 1], [2110, 10])
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=0, k_neighbors=3))
    want_x, _, _ = _imblearn("smote", X, y, {1: 2110}, 0, 3)
    np.testing.assert_array_equal(r.vectors, want_x)
    assert r.parents_by == "replayed" and r.parents_exact and len(r.labels) == 2100
    # every new row is base + step * (neighbour - base) with its recorded parents, nearer first
    a, b = X[r.parents[:, 0]].astype(np.float64), X[r.parents[:, 1]].astype(np.float64)
    d = b - a
    u = np.einsum("pd,pd->p", r.vectors - a, d) / np.einsum("pd,pd->p", d, d)
    assert np.all(u >= -1e-6) and np.all(u <= 0.5 + 1e-6)
    assert np.abs(a + u[:, None] * d - r.vectors).max() < 1e-5


@pytest.mark.parametrize("method", ["borderline", "smote", "random"])
def test_nothing_to_do_when_already_balanced(method):
    X, y = _blobs(counts=(10, 10, 10))
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method=method, target=8, k_neighbors=3,
                                                                  m_neighbors=4))
    assert r.vectors.shape == (0, 5) and r.vectors.dtype == np.float32
    assert r.labels.shape == (0,) and r.parents.shape == (0, 2)
    assert r.labels.dtype == np.int64 and r.parents.dtype == np.int64  # the same types as when rows are made
    assert r.residual == 0.0 and r.parents_exact
    assert r.parents_by == ("copied" if method == "random" else "replayed")
    assert r.counts_after == r.counts_before == {0: 10, 1: 10, 2: 10}
    assert [s.message() for s in r.shortfalls] == [f"class {n!r} reached 0 of its target 8: the input has no rows "
                                                   "of this class to interpolate from"
                                                   for n in ("happy", "neutral", "sad", "surprise")]


def test_targets_for():
    from pipeline.balance import targets_for

    assert targets_for({0: 5, 2: 9}, 4, "max") == {0: 9, 1: 9, 2: 9, 3: 9}
    assert targets_for({0: 5, 2: 9}, 4, 7) == {0: 7, 1: 7, 2: 9, 3: 7}  # never below what a class has
    assert targets_for({}, 2, "max") == {0: 0, 1: 0}


def test_config_and_target_parsing_messages():
    from pipeline.balance import parse_target

    with pytest.raises(BalanceError) as e:
        BalanceConfig(method="adasyn")
    assert str(e.value) == "unknown --method 'adasyn'; choose one of borderline, smote, random"
    for bad in (0, -3, "most", 2.5):
        with pytest.raises(BalanceError) as e:
            BalanceConfig(target=bad)
        assert str(e.value) == f"--target must be 'max' or a positive count, got {bad!r}"
    for k, m in ((0, 5), (5, 0), (0, 0)):
        with pytest.raises(BalanceError) as e:
            BalanceConfig(k_neighbors=k, m_neighbors=m)
        assert str(e.value) == "--k-neighbors and --m-neighbors must be >= 1"
    assert BalanceConfig(target=1, k_neighbors=1, m_neighbors=1).target == 1
    assert parse_target("max") == "max" and parse_target("12") == 12
    with pytest.raises(BalanceError) as e:
        parse_target("most")
    assert str(e.value) == "--target must be 'max' or a positive count, got 'most'"
    assert e.value.__suppress_context__


def test_train_only_message_counts_each_other_split():
    from pipeline.balance import check_train_only

    check_train_only(["train", "train"], "m.parquet")
    with pytest.raises(BalanceError) as e:
        check_train_only(["val", "train", "test", "val"], "m.parquet")
    assert str(e.value) == (
        "m.parquet holds 1 test, 2 val rows; balance works on the training split only (oversampling rows "
        "that validate or test a model leaks interpolated training images into them). Balance the "
        "train manifest (e.g. manifests/fer_train.parquet), or select its train rows first.")


def test_neighbour_checks_at_their_bounds():
    ls = get_label_set("fer2013")
    X, y = _blobs(counts=(12, 4, 9))
    with pytest.raises(BalanceError) as e:  # 4 rows, k = 4: no 4 neighbours besides itself
        oversample(X, y, ls, BalanceConfig(method="smote", k_neighbors=4))
    assert str(e.value) == (
        "classes {'disgust': 4} have no more rows than --k-neighbors 4; SMOTE interpolates between a row and "
        "one of its k nearest same-class rows, so each class to grow needs more than k rows. Lower "
        "--k-neighbors, or use --method random for such tiny classes.")
    assert oversample(X, y, ls, BalanceConfig(method="smote", k_neighbors=3)).counts_after == {0: 12, 1: 12, 2: 12}
    # a class not grown may be tiny; random copies need no neighbours
    assert oversample(X, y, ls, BalanceConfig(method="smote", k_neighbors=5, target=3)).labels.size == 0
    assert oversample(X, y, ls, BalanceConfig(method="random", k_neighbors=8)).counts_after == {0: 12, 1: 12, 2: 12}
    with pytest.raises(BalanceError) as e:
        oversample(X, y, ls, BalanceConfig(method="borderline", k_neighbors=3, m_neighbors=25))
    assert str(e.value) == "--m-neighbors 25 must be below the number of rows (25)"
    r = oversample(X, y, ls, BalanceConfig(method="borderline", k_neighbors=3, m_neighbors=24))
    assert r.parents_by == "replayed"
    assert oversample(X, y, ls, BalanceConfig(method="smote", k_neighbors=3, m_neighbors=25)).labels.size == 11


def test_borderline_shortfall_message_in_full():
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (30, 4)), rng.normal(50, 1, (8, 4))]).astype(np.float32)
    y = np.array([0] * 30 + [1] * 8)
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="borderline", k_neighbors=3, m_neighbors=5))
    assert r.shortfalls[0].message() == (
        "class 'disgust' reached 8 of its target 30: BorderlineSMOTE found no 'danger' rows in it (rows whose 5 "
        "nearest neighbours are mostly, but not all, of other classes), so it generated nothing; use --method "
        "smote, or change --m-neighbors")
    assert r.labels.size == 0 and r.parents.shape == (0, 2) and r.parents_by == "replayed"


def test_a_sampler_that_stops_short_is_reported(monkeypatch):
    # a fault injected: an oversampler that makes 3 rows fewer than asked
    import pipeline.balance as bal
    from imblearn.over_sampling import RandomOverSampler

    monkeypatch.setattr(bal, "_sampler", lambda cfg, strategy: RandomOverSampler(
        sampling_strategy={c: t - 3 for c, t in strategy.items()}, random_state=cfg.seed))
    X, y = _blobs(counts=(20, 10, 17))
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="random"))
    assert r.counts_after == {0: 20, 1: 17, 2: 17}
    assert [s.message() for s in r.shortfalls[:2]] == [
        "class 'disgust' reached 17 of its target 20: the oversampler generated only 7 rows",
        "class 'fear' reached 17 of its target 20: the oversampler generated only 0 rows"]


def test_the_neighbour_recorder_answers_as_nearest_neighbors(monkeypatch):
    # the k-neighbour estimator handed to imblearn answers every query as scikit-learn's
    # NearestNeighbors does and keeps each index table it returns
    import imblearn.over_sampling
    from imblearn.over_sampling import SMOTE
    from sklearn.neighbors import NearestNeighbors

    seen = {}

    class Probing(SMOTE):
        def fit_resample(self, X, y):
            out = super().fit_resample(X, y)
            nn = self.nn_k_
            seen["own"] = [t.copy() for t in nn.tables_]
            seen["default"] = nn.kneighbors(X[:4])
            seen["two"] = nn.kneighbors(X[:4], n_neighbors=2, return_distance=True)
            seen["idx"] = nn.kneighbors(X[:4], 3, False)
            seen["tables"] = nn.tables_[len(seen["own"]):]
            return out

    monkeypatch.setattr(imblearn.over_sampling, "SMOTE", Probing)
    X, y = _blobs(counts=(20, 8), dims=4, seed=6)
    oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=1, k_neighbors=3))
    plain = NearestNeighbors(n_neighbors=4).fit(X[y == 1])  # k + 1: the row itself and its 3 neighbours
    assert len(seen["own"]) == 1
    np.testing.assert_array_equal(seen["own"][0], plain.kneighbors(X[y == 1], return_distance=False))
    for got, want in ((seen["default"], plain.kneighbors(X[:4])), (seen["two"], plain.kneighbors(X[:4], 2))):
        assert isinstance(got, tuple) and len(got) == 2
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
        np.testing.assert_array_equal(got[1], want[1])
    np.testing.assert_array_equal(seen["idx"], plain.kneighbors(X[:4], 3, return_distance=False))
    assert [t.shape for t in seen["tables"]] == [(4, 4), (4, 2), (4, 3)]
    for t, want in zip(seen["tables"], (seen["default"][1], seen["two"][1], seen["idx"])):
        np.testing.assert_array_equal(t, want)


def test_geometry_and_dims_messages():
    from pipeline.balance import image_geometry

    rows = _rows((1,) * 7, size=16) + _rows((1,) * 7, size=20) + _rows((1,) * 7, size=16, channels=3)
    with pytest.raises(BalanceError) as e:
        image_geometry(to_table(rows), "m.parquet")
    assert str(e.value).startswith("m.parquet mixes image sizes/channels (16x16x1, 16x16x3, 20x20x1); ")
    assert image_geometry(to_table(_rows((1,) * 7, size=20, channels=3)), "m") == (20, 20, 3)
    assert check_dims((20, 30, 3), 1800) == 1800  # at the limit is allowed
    with pytest.raises(BalanceError) as e:
        check_dims((20, 30, 3), 1799)
    assert str(e.value).startswith("pixel space at 30x20x3 is 1,800 dims, above --max-dims 1,799: SMOTE holds float32 "
                                   "copies of every row and searches neighbours in that space (about 0 GB for 30,000 rows")
    with pytest.raises(BalanceError) as e:
        check_dims((192, 192, 3), 20_000)
    assert "(about 27 GB for 30,000 rows; CMAEN" in str(e.value)  # 110,592 x 4 bytes x 2 copies x 30,000


def test_decode_matrix_values_and_progress():
    from pipeline.balance import decode_matrix

    rng = np.random.default_rng(0)
    pix = rng.integers(0, 256, (1030, 2, 3), dtype=np.uint8)
    got = []
    X = decode_matrix([encode(p) for p in pix], (2, 3, 1), progress=got.append)
    assert X.dtype == np.uint8 and X.shape == (1030, 6)
    np.testing.assert_array_equal(X, pix.reshape(1030, 6))
    assert got == [1024, 6]
    rgb = rng.integers(0, 256, (2, 2, 3, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_matrix([encode(p) for p in rgb], (2, 3, 3)), rgb.reshape(2, 18))
    with pytest.raises(BalanceError) as e:
        decode_matrix([encode(pix[0]), encode(rgb[0])], (2, 3, 1))
    assert str(e.value) == ("row 1: decoded shape (2, 3, 3) disagrees with its width/height/channels columns "
                            "(3x2x1); re-create the manifest with `pipeline ingest`")


def test_synthetic_rows_by_hand():
    from pipeline.balance import Oversampled, synthetic_rows

    rows = _tiny_rows((2, 1, 0, 0, 0, 0, 0))  # 2x2 grey: two 'angry', one 'disgust'
    table = to_table(rows)
    vec = np.array([[-3.2, 255.6, 10.5, 11.5], [1.0, 2.0, 3.0, 4.49], [7, 7, 7, 7]], np.float32)
    res = Oversampled(vec, np.array([0, 0, 1]), np.array([[1, 0], [0, 1], [2, 2]]), 0.0, {}, {}, {})
    cfg = BalanceConfig(method="smote", seed=7)
    out = synthetic_rows(table, res, LS, cfg, (2, 2, 1))
    assert out.schema == table.schema
    got = out.to_pylist()
    ids = [r["sample_id"] for r in rows]
    want_pix = [[[0, 255], [10, 12]], [[1, 2], [3, 4]], [[7, 7], [7, 7]]]  # clipped, rounded half to even
    for g, pix in zip(got, want_pix):
        np.testing.assert_array_equal(decode(g["image"])[0], np.array(pix, np.uint8))
        assert g["pixel_hash"] == pixel_hash(np.array(pix, np.uint8))
    assert [g["source_path"] for g in got] == ["balance:smote:seed=7:angry:000000", "balance:smote:seed=7:angry:000001",
                                               "balance:smote:seed=7:disgust:000000"]
    assert [g["parent_ids"] for g in got] == [[ids[1], ids[0]], [ids[0], ids[1]], [ids[2]]]
    assert got[0]["sample_id"] == sample_id("synth", f"balance:smote:seed=7:angry:000000<-{ids[1]},{ids[0]}")
    assert got[2]["sample_id"] == sample_id("synth", f"balance:smote:seed=7:disgust:000000<-{ids[2]}")
    for g, lab in zip(got, (0, 0, 1)):
        assert (g["dataset"], g["split"], g["label"], g["label_id"], g["label_set"]) == (
            "synth", "train", LS.names[lab], lab, LS.name)
        assert (g["image_format"], g["width"], g["height"], g["channels"], g["synthetic"], g["leak"]) == (
            "png", 2, 2, 1, True, False)
    rgb = to_table(_tiny_rows((1,) + (0,) * 6, channels=3))
    one = Oversampled(np.arange(12, dtype=np.float32)[None], np.array([0]), np.array([[0, 0]]), 0.0, {}, {}, {})
    img = decode(synthetic_rows(rgb, one, LS, cfg, (2, 2, 3)).column("image")[0].as_py())[0]
    np.testing.assert_array_equal(img, np.arange(12, dtype=np.uint8).reshape(2, 2, 3))


def test_balance_manifest_report_and_progress(manifest):
    table, ls = read_manifest(manifest)
    said = []
    out, rep = balance_manifest(table, ls, BalanceConfig(method="random", seed=1, target=26), progress=said.append)
    new = sum(max(0, 26 - n) for n in COUNTS)
    assert said == [f"decoding {table.num_rows:,} images (256 dims)", "oversampling with random",
                    f"encoding {new:,} synthetic images"]
    assert sorted(rep["seconds_by_step"]) == ["decode", "encode", "oversample", "parents"]
    assert rep["space"] == "pixels 256" and rep["rows_in"] == sum(COUNTS) and rep["rows_new"] == new
    assert rep["classes"] == [{"label": LS.names[c], "before": n, "after": max(n, 26), "target": max(n, 26)}
                              for c, n in enumerate(COUNTS)]
    assert rep["settings"] == {"method": "random", "seed": 1, "target": 26, "max_dims": 20_000,
                               "k_neighbors": 5, "m_neighbors": 10}
    assert (rep["parent_max_distance"], rep["parents_exact"], rep["parents_by"], rep["shortfalls"]) == (
        0.0, True, "copied", [])
    # a copy's pixels are its parent's
    img = dict(zip(out.column("sample_id").to_pylist(), out.column("image").to_pylist()))
    syn = _synthetic(out)
    assert all(img[p[0]] == b for p, b in zip(syn.column("parent_ids").to_pylist(), syn.column("image").to_pylist()))
    assert balance_manifest(table, ls, BalanceConfig(method="random", seed=1, target=26))[0].equals(out)


def test_report_rounds_and_names_every_class():
    from pipeline.balance import Oversampled, Shortfall, report

    r = Oversampled(np.zeros((2, 3), np.float32), np.array([1, 1]), np.zeros((2, 2), np.int64), 0.125,
                    {0: 4, 1: 4}, {0: 4, 1: 2}, {0: 4, 1: 4}, seconds={"a": 1.23456, "b": 0.005},
                    shortfalls=[Shortfall("x", 1, 2, "why")], parents_exact=np.bool_(False), parents_by="searched")
    ls = get_label_set("fer2013").__class__("two", ("p", "q"))
    rep = report(r, ls, BalanceConfig(), 3.14159, "features 3")
    assert rep == {
        "settings": {"method": "borderline", "seed": 0, "target": "max", "max_dims": 20_000, "k_neighbors": 5,
                     "m_neighbors": 10},
        "space": "features 3", "seconds": 3.14, "seconds_by_step": {"a": 1.23, "b": 0.01},
        "rows_in": 6, "rows_new": 2,
        "classes": [{"label": "p", "before": 4, "after": 4, "target": 4},
                    {"label": "q", "before": 2, "after": 4, "target": 4}],
        "parent_max_distance": 0.125, "parents_exact": False, "parents_by": "searched",
        "shortfalls": ["class 'x' reached 1 of its target 2: why"],
    }
    assert type(rep["parents_exact"]) is bool


def test_balance_features_by_hand():
    ids_rows = _tiny_rows((6, 3, 0, 0, 0, 0, 0))
    table = to_table(ids_rows)
    X, _ = _blobs(counts=(6, 3), dims=4, seed=3)
    cfg = BalanceConfig(method="random", seed=2)
    ft, rep = balance_features(table, X.astype(np.float64), LS, cfg)
    ids = [r["sample_id"] for r in ids_rows]
    _, _, sampler = _imblearn("random", X, np.repeat([0, 1], [6, 3]), {1: 6}, 2, 5)
    src = sampler.sample_indices_[9:]
    assert ft.column_names == ["sample_id", "vector", "label_id", "label", "synthetic", "parent_ids"]
    assert ft.schema.field("label_id").type == pa.int16()
    want_ids = ids + [sample_id("synth", f"balance-features:random:seed=2:disgust:{k:06d}<-{ids[p]}")
                      for k, p in enumerate(src)]
    assert ft.column("sample_id").to_pylist() == want_ids
    np.testing.assert_array_equal(np.array(ft.column("vector").to_pylist(), np.float32),
                                  np.concatenate([X, X[src]]))
    assert ft.column("label_id").to_pylist() == [0] * 6 + [1] * 6
    assert ft.column("label").to_pylist() == ["angry"] * 6 + ["disgust"] * 6
    assert ft.column("synthetic").to_pylist() == [False] * 9 + [True] * 3
    assert ft.column("parent_ids").to_pylist() == [None] * 9 + [[ids[p]] for p in src]
    assert rep["space"] == "features 4" and rep["rows_new"] == 3 and rep["parents_by"] == "copied"
    smote, _ = balance_features(table, X, LS, BalanceConfig(method="smote", seed=2, k_neighbors=2))
    par = smote.column("parent_ids").to_pylist()[9:]
    assert all(len(p) == 2 for p in par)
    k = smote.column("sample_id").to_pylist()[9]
    assert k == sample_id("synth", f"balance-features:smote:seed=2:disgust:000000<-{par[0][0]},{par[0][1]}")
    with pytest.raises(BalanceError, match="1 val rows"):
        balance_features(to_table(ids_rows + _tiny_rows((1,) + (0,) * 6, split="val")), np.zeros((10, 4)), LS, cfg)


def _shifted_smote(delta, rows=None, extra_table=False):
    """imblearn's SMOTE with a fault injected: new rows `rows` (all when None) moved by `delta`
    along the first axis, and with `extra_table` one more neighbour query after resampling."""
    from imblearn.over_sampling import SMOTE

    class ShiftedSMOTE(SMOTE):
        def fit_resample(self, X, y):
            Xr, yr = super().fit_resample(X, y)
            Xr = np.array(Xr, np.float64)
            new = np.arange(len(X), len(Xr))
            Xr[new if rows is None else new[rows], 0] += delta
            if extra_table:
                self.nn_k_.kneighbors(X[:2], return_distance=False)
            return Xr, yr

    return ShiftedSMOTE


@pytest.mark.parametrize("scale", [4.0, 0.5])  # largest |X| above 1, and below (the tolerance uses at least 1)
@pytest.mark.parametrize("ratio", [0.7, 1.5])
def test_parents_exact_means_within_the_stated_tolerance(monkeypatch, scale, ratio):
    """parents_exact holds when every new row lies within 1e-5 * max(1, max|X|) * sqrt(dims) of
    its parents' segment: a shift of 0.7x that is accepted, 1.5x is not (and is searched for)."""
    import imblearn.over_sampling

    X, y = _blobs(counts=(20, 8), dims=4, seed=6)
    X = (X / np.abs(X).max() * scale).astype(np.float32)
    X[0, 0] = scale  # the largest |X|, exactly
    tol = 1e-5 * max(1.0, scale) * np.sqrt(4)
    monkeypatch.setattr(imblearn.over_sampling, "SMOTE", _shifted_smote(ratio * tol))
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=1, k_neighbors=3))
    assert len(r.labels) == 12
    assert r.residual == pytest.approx(ratio * tol, rel=0.05)
    assert r.parents_exact == (ratio < 1)
    assert r.parents_by == ("replayed" if ratio < 1 else "searched")


def test_replay_checks_every_row_across_chunks(monkeypatch):
    # one row moved off its segment, right at the start of the second chunk of 2,048
    import imblearn.over_sampling

    rng = np.random.default_rng(5)
    X = np.concatenate([rng.normal(0, 1, (2110, 3)), rng.normal(0.5, 1, (10, 3))]).astype(np.float32)
    y = np.repeat([0, 1], [2110, 10])
    tol = 1e-5 * float(np.abs(X).max()) * np.sqrt(3)
    monkeypatch.setattr(imblearn.over_sampling, "SMOTE", _shifted_smote(2 * tol, rows=[2048]))
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=0, k_neighbors=3))
    assert r.parents_by == "searched" and not r.parents_exact


@pytest.mark.parametrize("row", [0, 11])
def test_replay_checks_the_first_and_last_row(monkeypatch, row):
    import imblearn.over_sampling

    X, y = _blobs(counts=(20, 8), dims=4, seed=6)
    tol = 1e-5 * float(np.abs(X).max()) * np.sqrt(4)
    monkeypatch.setattr(imblearn.over_sampling, "SMOTE", _shifted_smote(2 * tol, rows=[row]))
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=1, k_neighbors=3))
    assert len(r.labels) == 12 and r.parents_by == "searched"  # the replay noticed; the search took over


def test_replay_refuses_a_neighbour_table_it_did_not_use(monkeypatch):
    # another imblearn that queried its neighbours once more: the replay cannot tell which table
    # is which, so it leaves the parents to the search
    import imblearn.over_sampling

    monkeypatch.setattr(imblearn.over_sampling, "SMOTE", _shifted_smote(0.0, extra_table=True))
    X, y = _blobs(counts=(20, 8), dims=4, seed=6)
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="smote", seed=1, k_neighbors=3))
    assert r.parents_by == "searched" and r.parents_exact
    np.testing.assert_array_equal(r.parents, _true_parents(X, y, r.vectors, r.labels)[0])


def test_borderline_replay_goes_on_past_a_class_without_danger_rows():
    # class 1 sits far away (no 'danger' rows, nothing drawn); class 2 overlaps class 0 and is grown
    rng = np.random.default_rng(1)
    X = np.concatenate([rng.normal(0, 1, (30, 3)), rng.normal(60, 1, (8, 3)),
                        rng.normal(0.8, 1, (10, 3))]).astype(np.float32)
    y = np.repeat([0, 1, 2], [30, 8, 10])
    r = oversample(X, y, get_label_set("fer2013"), BalanceConfig(method="borderline", seed=0, k_neighbors=3,
                                                                  m_neighbors=6, target=30))
    assert r.counts_after[1] == 8 and r.counts_after[2] == 30
    assert r.parents_by == "replayed" and r.parents_exact
    np.testing.assert_array_equal(r.parents, _true_parents(X, y, r.vectors, r.labels)[0])


def test_parent_search_refuses_a_row_without_candidates():
    # two far-apart clusters of one class, one base row in the first: a new row in the second
    # cluster has no base among its neighbours
    rng = np.random.default_rng(0)
    X = np.concatenate([rng.normal(0, 1, (5, 3)), rng.normal(100, 1, (5, 3))]).astype(np.float32)
    y = np.zeros(10, np.int64)
    s = np.stack([X[0] + 0.3 * (X[1] - X[0]), X[6] + 0.3 * (X[7] - X[6])])
    with pytest.raises(RuntimeError) as e:
        recover_parents(X, y, s, np.zeros(2, np.int64), k=2, bases=np.array([0]))
    assert str(e.value) == "balance: a synthetic row has no candidate parents; please report this input"
    parents, miss = recover_parents(X, y, s[:1], np.zeros(1, np.int64), k=2, bases=np.array([0]))
    assert list(parents[0]) == [0, 1] and miss < 1e-5


def test_recover_parents_over_several_chunks_and_classes():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(30, 4)).astype(np.float32)
    y = np.repeat([0, 1, 2], 10)
    pairs, new, new_y = [], [], []
    for i in range(300):
        c = i % 3
        members = np.flatnonzero(y == c)
        a = members[i % 10]
        b = members[np.argsort(np.linalg.norm(X[members] - X[a], axis=1))[1 + i % 3]]
        u = (i % 7 + 0.5) / 8
        new.append(X[a] + u * (X[b] - X[a]))
        new_y.append(c)
        pairs.append((a, b) if u <= 0.5 else (b, a))
    parents, miss = recover_parents(X, y, np.array(new, np.float32), np.array(new_y), k=3, chunk=64)
    np.testing.assert_array_equal(parents, np.array(pairs))
    assert miss < 1e-5
    np.testing.assert_array_equal(recover_parents(X, y, np.array(new, np.float32), np.array(new_y), k=3)[0], parents)


def test_full_messages_for_shapes_and_dims():
    from pipeline.balance import image_geometry

    rows = [r for size in (16, 17, 18, 19, 20, 21) for r in _rows((1,) + (0,) * 6, size=size)]
    with pytest.raises(BalanceError) as e:
        image_geometry(to_table(rows), "m.parquet")
    assert str(e.value) == (
        "m.parquet mixes image sizes/channels (16x16x1, 17x17x1, 18x18x1, 19x19x1, 20x20x1); pixel-space "
        "balancing needs one shape. Bring every image to one size and channel count first (`pipeline enhance`), "
        "or balance in a feature space with --features.")
    with pytest.raises(BalanceError) as e:
        check_dims((192, 192, 3), 20_000)
    assert str(e.value) == (
        "pixel space at 192x192x3 is 110,592 dims, above --max-dims 20,000: SMOTE holds float32 copies of every "
        "row and searches neighbours in that space (about 27 GB for 30,000 rows; CMAEN balanced 192x192x3 = "
        "110,592 dims). Balance before enhancing (at the source resolution), or in a feature space with "
        "--features FILE from `pipeline embed`; raise --max-dims only if you have the memory.")
    # the estimate is 4 bytes x 2 copies x 30,000 rows per dim: 1,002,060 dims is 240.49 GB
    with pytest.raises(BalanceError, match=r"\(about 240 GB for 30,000 rows"):
        check_dims((1, 1_002_060, 1), 20_000)
    with pytest.raises(BalanceError, match=r"at 5x2x3 is 30 dims, above --max-dims 29:"):
        check_dims((2, 5, 3), 29)


def test_default_where_and_durations():
    table = to_table(_tiny_rows((3, 3)) + _tiny_rows((1, 0), split="test"))
    with pytest.raises(BalanceError, match=r"^manifest holds 1 test rows;"):
        balance_manifest(table, LS, BalanceConfig(method="random"))
    with pytest.raises(BalanceError, match=r"^manifest holds 1 test rows;"):
        balance_features(table, np.zeros((7, 2)), LS, BalanceConfig(method="random"))
    _, rep = balance_manifest(to_table(_tiny_rows((5, 3))), LS, BalanceConfig(method="random"))
    assert 0 <= rep["seconds"] < 60 and all(0 <= v < 60 for v in rep["seconds_by_step"].values())
    r = oversample(*_blobs(), get_label_set("fer2013"), BalanceConfig(method="smote", k_neighbors=3))
    assert all(0 <= v < 60 for v in r.seconds.values())
