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
