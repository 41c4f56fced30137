"""Tiny synthetic manifests and feature files for the trainer's tests (offline, seconds).

Each class draws a bright block at its own place on a noisy background, so a small CNN can
learn it in a few steps: enough to see a loss fall and metrics move, cheap to decode.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from features.images import encode, pixel_hash
from features.labels import get_label_set
from features.manifest import sample_id, to_table, write_manifest

TINY_VGG = {"stages": [8, 16], "fc_dim": 32, "convs_per_stage": 1}


def synth_image(label: int, rng: np.random.Generator, size: int = 48, channels: int = 1) -> np.ndarray:
    img = rng.integers(0, 60, (size, size), dtype=np.uint8)
    cell = size // 4
    r, c = divmod(label % 8, 4)
    img[r * cell * 2: r * cell * 2 + cell, c * cell: c * cell + cell] = 230
    return np.repeat(img[..., None], 3, axis=2) if channels == 3 else img


def synth_rows(n: int, split: str, seed: int = 0, size: int = 48, channels: int = 1,
               label_set: str = "synth", clips: int | None = None, frames: int = 4) -> list[dict]:
    ls = get_label_set(label_set)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % len(ls)
        clip = None if clips is None else f"clip{seed}-{i // frames}"
        if clips is not None:
            label = (i // frames) % len(ls)
        img = synth_image(label, rng, size, channels)
        src = f"{split}/{seed}/{i}.png"
        rows.append({
            "sample_id": sample_id("synth", src), "dataset": "synth", "split": split,
            "source_path": src, "label": ls.names[label], "label_id": label, "label_set": ls.name,
            "image": encode(img), "image_format": "png", "width": size, "height": size,
            "channels": channels, "pixel_hash": pixel_hash(img), "clip_id": clip,
            "frame_index": None if clips is None else i % frames,
        })
    return rows


def write_synth(path: Path, n: int, split: str, seed: int = 0, **kw) -> Path:
    rows = synth_rows(n, split, seed, **kw)
    ls = get_label_set(kw.get("label_set", "synth"))
    return write_manifest(to_table(rows), path, ls, producer={"test": "train_fixtures"})


def write_pair(tmp: Path, n_train: int = 56, n_val: int = 21, **kw) -> tuple[Path, Path]:
    tr = write_synth(tmp / "demo_train.parquet", n_train, "train", seed=1, **kw)
    va = write_synth(tmp / "demo_val.parquet", n_val, "val", seed=2, **kw)
    return tr, va


def write_features(path: Path, manifest: Path, dim: int = 16, tokens: int | None = None,
                   drop: int = 0, seed: int = 0, encoder: str | None = None) -> Path:
    """A feature file keyed by the manifest's sample_ids, written as `pipeline embed` writes
    one (features.encoders, with its features_meta, which names `encoder`, none by default); vectors carry the
    label (a test fixture, not a caption: real caption features never derive from labels)."""
    import pyarrow.parquet as pq

    from features.encoders import Encoded, features_table, write_features as write

    t = pq.read_table(manifest, columns=["sample_id", "label_id"])
    ids = t.column("sample_id").to_pylist()[drop:]
    labels = t.column("label_id").to_pylist()[drop:]
    rng = np.random.default_rng(seed)
    vec = rng.normal(0, 0.1, (len(ids), dim)).astype(np.float32)
    vec[np.arange(len(ids)), np.asarray(labels) % dim] += 1.0
    enc = Encoded(vec)
    if tokens:
        toks = rng.normal(0, 0.1, (len(ids), tokens, dim)).astype(np.float32) + vec[:, None, :]
        mask = np.array([[1] * (tokens - (i % 2)) + [0] * (i % 2) for i in range(len(ids))], dtype=np.int8)
        enc = Encoded(vec, toks, mask)
    return write(features_table(ids, enc), path,
                 {"tokens": bool(tokens), "source_manifest": str(manifest),
                  **({"encoder": encoder} if encoder else {})})


def train_config(pair: tuple[Path, Path], out: Path, **kw):
    """A TrainConfig for a tiny vgg on `pair` (train, val manifests); `kw` overrides any field."""
    from train.config import make_config

    base = dict(manifest=str(pair[0]), val=str(pair[1]), model="vgg", model_options=dict(TINY_VGG),
                epochs=1, batch_size=8, out=str(out), device="cpu", workers=1)
    return make_config(**(base | kw))


@pytest.fixture(autouse=True)
def single_thread():
    """One torch thread per test: several times faster than the default on a shared 2-core CPU.
    Autouse in every module that imports it."""
    import torch

    torch.set_num_threads(1)
