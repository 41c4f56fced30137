"""`pipeline embed`: feature files from captions (MiniLM, tiny DistilBERT) and images (tiny CLIP, ResNet-18)."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from features import encoders
from features.manifest import META_PRODUCER, read_manifest
from pipeline.cli import app
from pipeline.runner import merge_shards
from tiny_models import face_rows, random_resnet18, tiny_clip_vision, tiny_distilbert, write_face_manifest

CAPTIONS = ["a woman with her mouth open", "a man looking at the camera", "a black and white photo of a face"]
runner = CliRunner()


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _embed(*args):
    return runner.invoke(app, ["embed", "--device", "cpu", *map(str, args)])


def _text(res) -> str:
    return " ".join(res.output.split())  # rich wraps long messages at the terminal width


def _ids(path):
    return read_manifest(path, columns=["sample_id"])[0].column("sample_id").to_pylist()


def test_minilm_caption_features(tmp_path):
    src = write_face_manifest(tmp_path / "cap.parquet", n=9, captions=CAPTIONS)
    out = tmp_path / "minilm.parquet"
    res = _embed("--in", src, "--out", out, "--encoder", "minilm", "--batch-size", 4)
    assert res.exit_code == 0, res.output
    meta = encoders.features_meta(out)
    assert (meta["encoder"], meta["dim"], meta["dtype"], meta["rows"], meta["kind"]) == ("minilm", 384, "float16", 9,
                                                                                          "text")
    assert meta["source_manifest"] == str(src) and len(meta["weights_sha256"]) == 16
    assert json.loads(pq.read_schema(out).metadata[META_PRODUCER])["stage"] == "embed"
    ids = _ids(src)[::-1]
    got = encoders.read_features(out, ids)
    caps = dict(zip(_ids(src), read_manifest(src)[0].column("caption").to_pylist()))
    ref = encoders.load_text_encoder("minilm").encode([caps[i] for i in ids]).vectors
    assert got.shape == (9, 384)
    assert np.abs(got - ref).max() < 1e-3   # float16 storage of unit vectors
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.99999


def test_distilbert_tokens_float32_exact(tmp_path):
    weights = tiny_distilbert(tmp_path / "db")
    src = write_face_manifest(tmp_path / "cap.parquet", n=5, captions=CAPTIONS)
    out = tmp_path / "db.parquet"
    res = _embed("--in", src, "--out", out, "--encoder", "distilbert", "--weights", weights, "--tokens",
                 "--dtype", "float32", "--max-length", 12)
    assert res.exit_code == 0, res.output
    ids = _ids(src)
    caps = dict(zip(ids, read_manifest(src)[0].column("caption").to_pylist()))
    enc = encoders.load_text_encoder(encoders.EncoderSpec("distilbert", str(weights), max_length=12)).encode(
        [caps[i] for i in ids], tokens=True)
    assert np.allclose(encoders.read_features(out, ids), enc.vectors, atol=1e-6)
    assert np.allclose(encoders.read_features(out, ids, column="tokens"), enc.tokens, atol=1e-6)
    assert encoders.read_features(out, ids, column="token_mask").tolist() == enc.mask.tolist()
    assert encoders.features_meta(out)["tokens"] is True and encoders.features_meta(out)["pooling"] == "cls"


def test_image_encoders(tmp_path):
    src = write_face_manifest(tmp_path / "m.parquet", n=6)   # grey 48x48 and RGB 40x40 rows
    clip = tiny_clip_vision(tmp_path / "clip")
    res = _embed("--in", src, "--out", tmp_path / "clip.parquet", "--encoder", "clip", "--weights", clip)
    assert res.exit_code == 0, res.output
    assert encoders.read_features(tmp_path / "clip.parquet", _ids(src)).shape == (6, 16)
    r18 = random_resnet18(tmp_path / "r18.pth")
    res = _embed("--in", src, "--out", tmp_path / "r18.parquet", "--encoder", "resnet18", "--weights", r18,
                 "--dtype", "float32")
    assert res.exit_code == 0, res.output
    v = encoders.read_features(tmp_path / "r18.parquet", _ids(src))
    from features.images import decode

    imgs = [decode(b)[0] for b in read_manifest(src)[0].column("image").to_pylist()]
    ref = encoders.load_image_encoder(encoders.EncoderSpec("resnet18", str(r18))).encode(imgs)
    assert v.shape == (6, 512) and np.allclose(v, ref, atol=1e-4)


def test_text_encoder_needs_captions(tmp_path):
    src = write_face_manifest(tmp_path / "plain.parquet", n=3)
    res = _embed("--in", src, "--out", tmp_path / "o.parquet", "--encoder", "minilm")
    assert res.exit_code == 2
    assert "no caption column" in _text(res) and "pipeline caption" in _text(res)
    assert not (tmp_path / "o.parquet").exists()


def test_rows_without_captions_are_rejected_not_dropped_silently(tmp_path):
    rows = face_rows(4, captions=CAPTIONS)
    rows[1]["caption"] = None  # never captioned: rejected
    rows[2]["caption"] = "  "  # the captioner said nothing: embedded as empty text
    src = write_face_manifest(tmp_path / "m.parquet", rows=rows)
    out = tmp_path / "o.parquet"
    res = _embed("--in", src, "--out", out, "--encoder", "minilm")
    assert res.exit_code == 0, res.output
    assert pq.read_table(out).num_rows == 3
    rejects = [json.loads(line) for line in (tmp_path / "o.rejects.jsonl").read_text().splitlines()]
    assert [r["sample_id"] for r in rejects] == [rows[1]["sample_id"]]
    assert all("no caption" in r["reason"] for r in rejects)
    with pytest.raises(encoders.FeatureFileError, match="lacks 1 of the 1 rows"):
        encoders.read_features(out, [rows[1]["sample_id"]])


def test_missing_weights_and_bad_options(tmp_path, monkeypatch):
    src = write_face_manifest(tmp_path / "m.parquet", n=2, captions=CAPTIONS)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    for enc, msg in (("distilbert", "distilbert/distilbert-base-uncased"), ("clip", "openai/clip-vit-base-patch32"),
                     ("resnet18", "resnet18-f37072fd.pth")):
        res = _embed("--in", src, "--out", tmp_path / "o.parquet", "--encoder", enc)
        assert res.exit_code == 2, (enc, res.output)
        assert msg in _text(res) and "Traceback" not in res.output
    res = _embed("--in", src, "--out", tmp_path / "o.parquet", "--encoder", "bert")
    assert res.exit_code == 2 and "unknown encoder" in _text(res)
    res = _embed("--in", src, "--out", tmp_path / "o.parquet", "--encoder", "clip", "--tokens")
    assert res.exit_code == 2 and "--tokens needs a text encoder" in _text(res)
    assert not (tmp_path / "o.parquet").exists()


def test_shards_merge_to_the_unsharded_file(tmp_path):
    src = write_face_manifest(tmp_path / "cap.parquet", n=10, captions=CAPTIONS)
    base = ["--in", src, "--encoder", "minilm", "--batch-size", 3]
    assert _embed(*base, "--out", tmp_path / "all.parquet").exit_code == 0
    for i in range(2):
        res = _embed(*base, "--out", tmp_path / "sh.parquet", "--shard", f"{i}/2")
        assert res.exit_code == 0, res.output
    merge_shards([tmp_path / f"sh.shard-{i}-of-2.parquet" for i in range(2)], tmp_path / "merged.parquet",
                 check_in=src)
    ids = _ids(src)
    a = encoders.read_features(tmp_path / "all.parquet", ids)
    b = encoders.read_features(tmp_path / "merged.parquet", ids)
    assert np.abs(a - b).max() < 1e-3  # batches differ between the runs, so padding lengths may too
    assert encoders.features_meta(tmp_path / "merged.parquet")["encoder"] == "minilm"
