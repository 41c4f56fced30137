"""Manifest -> tensors, and a small deterministic batch loader.

Images are decoded once into a uint8 tensor in memory when they fit (FER2013's 28,709 grey 48x48
faces are 66 MB); otherwise the encoded bytes stay in memory and each batch is decoded on the
fly. Feature files (precomputed image or caption features) are joined onto the rows by
sample_id. Video models get clips: rows grouped by clip_id, ordered by frame_index, T frames.

The loader is a seeded permutation per epoch cut into batch slices, not a torch DataLoader:
with everything already in memory there is nothing for worker processes to do, and a
permutation from (seed, epoch) makes every epoch reproducible and resumable without state.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from features.labels import LabelSet, get_preset
from features.manifest import ManifestError, open_manifest, read_manifest
from train.transforms import Preprocess

DECODE_CHUNK = 512


class DataError(ValueError):
    """Training data that cannot be used as given; the message says what to do."""


@dataclass(frozen=True)
class InputSpec:
    """What the model eats: 'image' (C,H,W), 'clip' (T,C,H,W) or 'feature' (D,), plus text."""

    kind: str
    preprocess: Preprocess | None
    frames: int | None = None
    needs_text: bool = False


@dataclass
class SplitData:
    labels: Any  # int64 tensor (N,)
    sample_ids: list[str]  # clip ids for clip data
    class_names: tuple[str, ...]
    label_set: LabelSet
    kind: str
    images: Any = None  # uint8 (N,C,H,W) / (N,T,C,H,W) tensor, or None when decoded lazily
    encoded: list | None = None  # per item: bytes (image) or list of bytes (clip), lazy mode
    preprocess: Preprocess | None = None
    features: Any = None  # float32 (N,D) for feature models
    text: Any = None  # float32 (N,D) or (N,L,D)
    text_mask: Any = None  # bool (N,L)
    soft: Any = None  # float32 (N,K) probability targets (FER+ votes), or None for hard labels
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx) -> dict[str, Any]:
        """A batch of raw inputs (uint8 images, not yet augmented or normalised)."""
        out: dict[str, Any] = {"y": self.labels[idx], "index": idx}
        if self.soft is not None:
            out["soft"] = self.soft[idx]
        if self.kind == "feature":
            out["x"] = self.features[idx]
        elif self.images is not None:
            out["x"] = self.images[idx]
        else:
            out["x"] = _decode_items([self.encoded[i] for i in idx.tolist()], self.preprocess, self.kind)
        if self.text is not None:
            out["text"] = self.text[idx]
            out["text_mask"] = self.text_mask[idx] if self.text_mask is not None else None
        return out


# ---- reading -----------------------------------------------------------------------------

def sibling_val(train_manifest: str | Path) -> Path | None:
    """fer_train.parquet -> fer_val.parquet beside it, when it exists."""
    p = Path(train_manifest)
    if "train" not in p.name:
        return None
    i = p.name.rfind("train")
    cand = p.with_name(p.name[:i] + "val" + p.name[i + len("train"):])
    return cand if cand.exists() else None


def load_split(path: str | Path, role: str, spec: InputSpec, preset: str = "7",
               text_features: str | None = None, image_features: str | None = None,
               workers: int = 2, memory_budget: int | None = None, classes: str | None = None,
               targets: str = "labels", vote_weight: float = 1.0, opened: tuple | None = None,
               class_mapping: tuple | None = None) -> SplitData:
    """Read the rows of `path` whose split is `role` ('train' or 'val') into memory.

    `classes` (a label set name) maps the manifest's classes onto that set by canonical name;
    rows of classes it lacks are dropped (FER+ contempt on FER2013's 7). `targets="votes"` adds
    FER+ probability targets (`SplitData.soft`, (N,K) rows summing to 1) from the manifest's
    `ferplus_votes`: the FER+ paper's probability-distribution scheme (Barsoum et al. 2016),
    'unknown' and 'NF' votes dropped; the hard label stays the majority label.

    `opened` is `features.manifest.open_manifest(path)`'s (schema, label set) when the caller has
    it, and `class_mapping` `class_map(...)`'s (names, mapping) for that label set, so a run
    checks each manifest and applies the preset once."""
    import pyarrow.parquet as pq
    import torch

    path = Path(path)
    # ManifestError with a remedy for a wrong schema/version
    schema, ls = opened if opened is not None else open_manifest(path)
    cols = ["sample_id", "split", "label_id"]
    if spec.kind != "feature":
        cols.append("image")
    if spec.kind == "clip":
        cols += ["clip_id", "frame_index"]
    if targets == "votes":
        if "ferplus_votes" not in schema.names:
            raise DataError(f"{path} has no FER+ votes (column ferplus_votes); --targets votes needs "
                            "a FER+ manifest: `pipeline ingest ... --dataset ferplus "
                            "--ferplus-parquet ferplus.parquet`, or train with --targets labels")
        cols.append("ferplus_votes")
    if any(c not in schema.names for c in cols):
        read_manifest(path, columns=cols)  # raises its ManifestError naming the missing columns
    table = pq.read_table(path, columns=cols)  # the footer was checked above, once
    splits = set(table.column("split").to_pylist())
    if "test" in splits:
        raise DataError(
            f"{path} holds split=test rows; training and validation never read the test split "
            "(the best checkpoint is chosen on validation data carved from the training split). "
            "Pass the train/val manifests; evaluate on test once, at the end, with `train eval`.")
    split_col = np.asarray(table.column("split").to_pylist())
    keep = np.flatnonzero(split_col == role)
    if keep.size == 0:
        raise DataError(f"{path} has no rows with split={role!r} (it has {sorted(splits)}); "
                        f"pass the manifest of the {role} split")
    if keep.size < len(split_col):
        table = table.take(keep)

    names, mapping = class_mapping if class_mapping is not None else class_map(ls, preset, classes, path)
    label_ids = np.asarray(table.column("label_id").to_numpy(), dtype=np.int64)
    if label_ids.size and (label_ids.min() < 0 or label_ids.max() >= len(ls)):
        raise DataError(f"{path}: label_id outside 0..{len(ls) - 1} of label set {ls.name!r}")
    y = np.asarray([-1 if m is None else m for m in mapping], dtype=np.int64)[label_ids]
    dropped = int((y < 0).sum())
    if dropped:  # classes the target set lacks (--classes)
        kept = np.flatnonzero(y >= 0)
        table, y = table.take(kept), y[kept]
    ids = table.column("sample_id").to_pylist()

    data = SplitData(labels=None, sample_ids=ids, class_names=names, label_set=ls, kind=spec.kind,
                     preprocess=spec.preprocess)
    data.info["dropped_rows"] = dropped
    if targets == "votes":
        if spec.kind == "clip":
            raise DataError(f"{path}: --targets votes is for image models (FER+ has no clips)")
        data.soft = torch.from_numpy(vote_targets(table.column("ferplus_votes").to_pylist(), ls,
                                                  mapping, y, len(names), path, vote_weight))
    if spec.kind == "clip":
        groups, y, ids = _group_clips(table, y, spec.frames, path)
        data.sample_ids = ids
        items = [[table.column("image")[i].as_py() for i in g] for g in groups]
        row_ids = [table.column("sample_id")[g[0]].as_py() for g in groups]
    elif spec.kind == "image":
        items = table.column("image").to_pylist()
        row_ids = ids
    else:
        items, row_ids = None, ids
    data.labels = torch.from_numpy(y)

    if spec.kind == "feature":
        if not image_features:
            raise DataError("this model trains on precomputed image features: pass "
                            "--image-features F.parquet (written by `pipeline embed`)")
        vec, _, _ = read_split_features(image_features, role, ids)
        data.features = torch.from_numpy(vec)
    else:
        per_item = spec.preprocess.channels * math.prod(spec.preprocess.size) * (spec.frames or 1)
        budget = memory_budget if memory_budget is not None else _memory_budget()
        if per_item * len(items) <= budget:
            data.images = _decode_all(items, spec.preprocess, spec.kind, workers)
        else:
            data.encoded = items
        data.info["decoded_bytes"] = per_item * len(items)
        data.info["in_memory"] = data.images is not None
    if spec.needs_text:
        if not text_features:
            raise DataError("this model fuses caption text: pass --text-features F.parquet "
                            "(caption features written by `pipeline embed`)")
        # clip models key text by their first frame's sample_id
        vec, tok, mask = read_split_features(text_features, role, row_ids, tokens=True)
        if tok is not None:
            data.text, data.text_mask = torch.from_numpy(tok), torch.from_numpy(mask)
        else:
            data.text = torch.from_numpy(vec)
    return data


def class_map(ls: LabelSet, preset: str, classes: str | None,
              path: Path) -> tuple[tuple[str, ...], list[int | None]]:
    """Output class names and, for each class of `ls`, its output index (None: row dropped).

    `classes` names a label set to train on instead of the manifest's own (e.g. a FER+ manifest
    trained as FER2013's 7 classes, contempt dropped); it needs preset 7 and every class of the
    target set present in `ls`."""
    if classes is not None and str(preset) != "7":
        raise DataError(f"--classes {classes} maps whole label sets; use it with --preset 7")
    names, mapping = _preset(ls, preset, path)
    if classes is None:
        return names, list(mapping)
    from features.labels import cross_map, get_label_set

    try:
        dst = get_label_set(classes)
    except KeyError as e:
        raise DataError(f"--classes: {e.args[0]}") from None
    missing = [n for n, c in zip(dst.names, dst.canonical) if c is None or c not in ls.canonical]
    if missing:
        raise DataError(f"--classes {classes}: {path} (label set {ls.name!r}) has no rows of "
                        f"{missing}; a model cannot learn classes it never sees")
    return dst.names, cross_map(ls, dst)


def vote_targets(votes: list, ls: LabelSet, mapping: list[int | None], y: np.ndarray, k: int,
                 path: Path, vote_weight: float = 1.0) -> np.ndarray:
    """FER+ vote lists (N x 10, FERPLUS_VOTE_COLUMNS order) -> (N, k) float32 probabilities.

    Each vote counts for its class's output index (through `mapping`); votes for classes
    without one (unknown, NF, or a class --classes dropped) are left out and the rest are
    normalised. A row with no usable vote (or no vote list) falls back to its one-hot label `y`.
    `vote_weight` < 1 mixes: w * votes + (1 - w) * one-hot(y), e.g. FER+ votes beside FER2013's
    own label on the same face."""
    from features.labels import vote_columns_in

    bad = [i for i, v in enumerate(votes) if v is not None and len(v) != 10]
    if bad or (votes and all(v is None for v in votes)):
        raise DataError(f"{path}: {'row ' + str(bad[0]) + ' has a ferplus_votes list that is not 10 long' if bad else 'no row has FER+ votes'}; "
                        "--targets votes needs them (re-ingest with --ferplus-parquet)")
    votes = [v if v is not None else [0] * 10 for v in votes]  # no votes: the one-hot label below
    m = np.zeros((10, k), dtype=np.float32)
    for col, src in enumerate(vote_columns_in(ls)):
        out = mapping[src] if src is not None else None
        if out is not None:
            m[col, out] = 1.0
    v = np.asarray(votes, dtype=np.float32).reshape(-1, 10) if votes else np.zeros((0, 10), np.float32)
    soft = v @ m
    total = soft.sum(1, keepdims=True)
    empty = total[:, 0] <= 0
    soft = np.divide(soft, total, out=np.zeros_like(soft), where=total > 0)
    soft[empty, y[empty]] = 1.0
    if vote_weight < 1.0:  # a mix with the manifest's own (one-hot) label
        soft *= vote_weight
        soft[np.arange(len(y)), y] += 1.0 - vote_weight
    return soft


def _preset(ls: LabelSet, preset: str, path: Path) -> tuple[tuple[str, ...], list[int]]:
    try:
        return get_preset(preset).apply(ls)
    except (KeyError, ValueError) as e:
        raise DataError(f"{path}: label preset {preset!r} cannot apply to label set {ls.name!r}: "
                        f"{e.args[0] if e.args else e}") from None


def sample_clips(clip_ids: list, frame_index: list | None, labels: np.ndarray,
                 frames: int) -> list[tuple[Any, list[int], list[int]]]:
    """Frame rows -> clips: (clip_id, its rows in frame_index order, `frames` of them spread
    evenly over the clip), clips in sorted clip_id order. Short clips repeat frames
    (AffectFusion's sampling). The one clip sampler of training and `train eval`.

    Raises DataError naming a clip whose frames carry different labels (a clip has one)."""
    fidx = frame_index or [0] * len(clip_ids)
    by_clip: dict = {}
    for i, c in enumerate(clip_ids):
        by_clip.setdefault(c, []).append(i)
    out = []
    for c in sorted(by_clip):
        rows = sorted(by_clip[c], key=lambda i: (fidx[i] if fidx[i] is not None else 0))
        if len(set(labels[rows].tolist())) != 1:
            raise DataError(f"clip {c!r} has frames with different labels")
        pick = np.linspace(0, len(rows) - 1, frames).round().astype(int)
        out.append((c, rows, [rows[k] for k in pick]))
    return out


def _group_clips(table, y: np.ndarray, frames: int | None, path: Path):
    clip = table.column("clip_id").to_pylist()
    if any(c is None for c in clip):
        raise DataError(f"{path}: a video model needs clip_id on every row; this manifest has "
                        "rows without one (ingest a video dataset, e.g. DFEW)")
    try:
        clips = sample_clips(clip, table.column("frame_index").to_pylist(), y, frames or 16)
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    return ([pick for _, _, pick in clips], np.asarray([int(y[rows[0]]) for _, rows, _ in clips], dtype=np.int64),
            [c for c, _, _ in clips])


def _memory_budget() -> int:
    """Half of the physical memory: decoded images must leave room for the model and batches."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError):
        return 4 << 30


def _decode_items(items: list, pre: Preprocess, kind: str):
    import torch

    from features.images import BadImage, decode

    def dec(b):
        try:
            return decode(b)[0]
        except BadImage as e:
            raise DataError(f"an image in the manifest cannot be decoded: {e}") from None

    if kind == "clip":
        return torch.stack([pre.to_uint8([dec(b) for b in clip]) for clip in items])
    return pre.to_uint8([dec(b) for b in items])


def _decode_all(items: list, pre: Preprocess, kind: str, workers: int):
    """Decode in chunks on a thread pool (PIL and torch release the GIL for the heavy parts)."""
    import torch

    chunks = [items[i:i + DECODE_CHUNK] for i in range(0, len(items), DECODE_CHUNK)]
    if not chunks:
        shape = (0, pre.channels, *pre.size) if kind == "image" else (0, 1, pre.channels, *pre.size)
        return torch.empty(shape, dtype=torch.uint8)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        parts = list(pool.map(lambda c: _decode_items(c, pre, kind), chunks))
    return torch.cat(parts)


def read_split_features(path: str | Path, role: str, sample_ids: list[str], tokens: bool = False):
    """`features.encoders.read_features` for one split: the feature file given for training, or
    for the val split its *_val sibling when there is one (`pipeline embed` writes one file per
    manifest: demo_train_minilm -> demo_val_minilm). The file's `features_meta` is checked, as
    `train eval` checks it.

    Returns (vectors (N, D) float32, tokens (N, L, D) float32 or None, mask (N, L) bool or None),
    rows in `sample_ids` order; tokens only when asked and the file holds them. A missing,
    foreign or short file is a DataError naming it and the `pipeline embed` run that makes it."""
    from features.encoders import FeatureFileError, features_meta, read_features

    p = Path(path)
    p = (sibling_val(p) if role == "val" else None) or p
    try:
        vec = read_features(p, sample_ids)
        if not (tokens and features_meta(p).get("tokens")):
            return vec, None, None
        return vec, read_features(p, sample_ids, "tokens"), read_features(p, sample_ids, "token_mask").astype(bool)
    except FeatureFileError as e:
        raise DataError(str(e)) from None


# ---- batching ----------------------------------------------------------------------------

def epoch_permutation(n: int, seed: int, epoch: int):
    """The same (seed, epoch) gives the same order on every rank and after a resume."""
    import torch

    g = torch.Generator()
    g.manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n, generator=g)


def shard(indices, rank: int, world: int):
    """Rank `rank`'s share: every `world`-th index. Each index goes to exactly one rank; shares
    differ by at most one row (DDP's join() absorbs the uneven last step; nothing is padded
    or dropped, unlike DistributedSampler's default padding that repeats rows)."""
    return indices[rank::world]


class BatchLoader:
    def __init__(self, data: SplitData, batch_size: int, shuffle: bool, seed: int = 0,
                 rank: int = 0, world: int = 1, max_steps: int | None = None):
        self.data, self.batch_size, self.shuffle, self.seed = data, batch_size, shuffle, seed
        self.rank, self.world, self.max_steps = rank, world, max_steps
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def indices(self):
        import torch

        n = len(self.data)
        order = epoch_permutation(n, self.seed, self.epoch) if self.shuffle else torch.arange(n)
        return shard(order, self.rank, self.world)

    def bounds(self, n: int) -> list[tuple[int, int]]:
        """Batch slices of n rows. A last batch of one row joins the one before it: BatchNorm
        cannot train on a single sample, and dropping it would lose a row."""
        cuts = [(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        if len(cuts) > 1 and cuts[-1][1] - cuts[-1][0] == 1:
            cuts[-2:] = [(cuts[-2][0], n)]
        return cuts[: self.max_steps] if self.max_steps else cuts

    def __len__(self) -> int:
        return len(self.bounds(len(self.indices())))

    def __iter__(self):
        idx = self.indices()
        for start, stop in self.bounds(len(idx)):
            yield self.data.take(idx[start:stop])


def class_weights(labels, num_classes: int):
    """sklearn's 'balanced' weights: n / (k * count); classes absent from training get 0."""
    import torch
    from sklearn.utils.class_weight import compute_class_weight

    y = labels.numpy()
    present = np.unique(y)
    w = np.zeros(num_classes, dtype=np.float32)
    w[present] = compute_class_weight("balanced", classes=present, y=y)
    return torch.from_numpy(w)


def input_spec_for(model, preprocess: Preprocess | None = None, frames: int | None = None) -> InputSpec:
    """The model's own description of its input (config + class attributes)."""
    cfg = model.config
    kind = model.input_kind
    if kind == "feature":
        pre = None
    else:
        pre = preprocess or Preprocess.default_for(cfg.input_size, cfg.in_chans)
        # a model trained on other statistics (CLIP's) says so with input_mean / input_std
        mean, std = getattr(model, "input_mean", None), getattr(model, "input_std", None)
        if preprocess is None and mean is not None and std is not None:
            pre = Preprocess(pre.size, pre.channels, tuple(mean), tuple(std), pre.resize)
    t = (frames or getattr(cfg, "frames", None)) if kind == "clip" else None
    return InputSpec(kind, pre, t, bool(model.needs_text))


__all__ = ["DataError", "ManifestError", "InputSpec", "SplitData", "load_split", "BatchLoader",
           "read_split_features", "sample_clips", "shard", "epoch_permutation", "class_weights", "sibling_val",
           "input_spec_for"]
