"""`train eval`'s engine: a checkpoint on a manifest's test rows -> report.json, report.md, plots.

Honest variants side by side, each scored plain and (when asked) with test-time augmentation:
all test rows; leak-free (rows whose pixels also occur in training excluded); FER2013
PrivateTest alone; per clip / per sequence when the manifest has groups. A checkpoint trained on
another label set is scored zero-shot through `features.labels.cross_map` (classes the target
set lacks are excluded, never forced into a wrong class).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from features.labels import LabelSet, cross_map, get_label_set, get_preset
from train.checkpoint import CheckpointError, class_names, load_trained, preprocess_of
from train.metrics import group_average, reliability_bins, score, softmax
from train.report import write_report

TTA_MODES = ("none", "flip", "tencrop")
LABEL_MAPS = ("auto", "none")
TENCROP_SCALE = 1.125  # resize up by this much, then take ten crops of the model's size


class EvalError(ValueError):
    """A checkpoint/manifest pair that cannot be evaluated; the message says why and what to do."""


@dataclass(frozen=True)
class EvalConfig:
    tta: str = "none"
    label_map: str = "auto"
    split: str = "test"
    batch_size: int = 256
    device: str = "cpu"
    plots: bool = True
    tsne_points: int = 2000
    image_features: Path | None = None  # for models that take precomputed embeddings
    text_features: Path | None = None  # for models that fuse caption text (pooled vectors)

    def __post_init__(self):
        if self.tta not in TTA_MODES:
            raise EvalError(f"--tta {self.tta!r} unknown; use one of {', '.join(TTA_MODES)}")
        if self.label_map not in LABEL_MAPS:
            raise EvalError(f"--label-map {self.label_map!r} unknown; use one of {', '.join(LABEL_MAPS)}")


@dataclass(frozen=True)
class LabelMapping:
    """How manifest classes meet the model's outputs."""

    to_model: tuple[int | None, ...]  # manifest label_id -> model class index, None = excluded
    scored: tuple[int, ...]  # model classes that the manifest can hold: the columns scored
    zero_shot: bool
    excluded: tuple[str, ...]  # manifest classes the model cannot predict

    def as_dict(self, manifest_ls: LabelSet, model_names) -> dict:
        return {"zero_shot": self.zero_shot, "excluded_manifest_classes": list(self.excluded),
                "manifest_to_model": {manifest_ls.names[i]: (None if j is None else model_names[j])
                                      for i, j in enumerate(self.to_model)},
                "scored_classes": [model_names[j] for j in self.scored]}


# ---- labels -------------------------------------------------------------------------------------

def _ckpt_label_set(labels: dict, class_names: tuple[str, ...]) -> LabelSet:
    """The label set the checkpoint was trained on (before its preset)."""
    ls = labels.get("label_set")
    if isinstance(ls, dict) and ls.get("names"):
        return LabelSet(ls.get("name", "checkpoint"), tuple(ls["names"]))
    if isinstance(ls, str):
        names = labels.get("label_names")
        if names:
            return LabelSet(ls, tuple(names))
        try:
            return get_label_set(ls)
        except KeyError:
            pass
    return LabelSet("checkpoint", class_names)


def label_mapping(sidecar: dict, manifest_ls: LabelSet, class_names: tuple[str, ...],
                  mode: str = "auto") -> LabelMapping:
    labels = sidecar.get("labels") or {}
    base = _ckpt_label_set(labels, class_names)
    preset = str(labels.get("preset", "7"))
    try:
        out_names, base_to_model = get_preset(preset).apply(base)
    except (KeyError, ValueError):
        out_names, base_to_model = class_names, list(range(len(class_names)))
    if tuple(out_names) != tuple(class_names):  # a sidecar whose preset does not explain its classes
        base, base_to_model = LabelSet("checkpoint", class_names), list(range(len(class_names)))
    if tuple(manifest_ls.names) == tuple(base.names):
        to_model = list(base_to_model)
        zero_shot = False
    elif tuple(manifest_ls.names) == tuple(class_names):
        to_model = list(range(len(class_names)))
        zero_shot = False
    else:
        what = (f"the checkpoint's classes ({', '.join(class_names)}; label set {base.name!r}, preset "
                f"{preset}) do not match the manifest's label set {manifest_ls.name!r} "
                f"({', '.join(manifest_ls.names)})")
        if mode == "none":
            raise EvalError(f"{what}; pass --label-map auto to score it zero-shot through the shared "
                            "emotions, or evaluate on a manifest of the label set it was trained on")
        to_base = cross_map(manifest_ls, base)
        to_model = [None if j is None else base_to_model[j] for j in to_base]
        if all(j is None for j in to_model):
            raise EvalError(f"{what}, and no class maps across (they share no emotion): there is "
                            "nothing to score. Evaluate on a manifest of the label set it was trained on")
        zero_shot = True
    excluded = tuple(manifest_ls.names[i] for i, j in enumerate(to_model) if j is None)
    scored = tuple(sorted({j for j in to_model if j is not None}))
    if not zero_shot:
        scored = tuple(range(len(class_names)))
    return LabelMapping(tuple(to_model), scored, zero_shot, excluded)


# ---- rows ---------------------------------------------------------------------------------------

@dataclass
class Rows:
    sample_ids: list[str]
    images: list  # decoded uint8 arrays (None for feature models)
    targets: np.ndarray  # model class index
    leak: np.ndarray
    orig_split: list
    groups: list | None
    group_kind: str | None
    dropped: dict = field(default_factory=dict)
    frame_index: list | None = None
    unit: str = "row"  # "clip" once frames are grouped into clips for a video model


def read_rows(path: Path, split: str, mapping: LabelMapping, decode_images: bool = True,
              split_option: bool = True) -> Rows:
    """The rows of `split` in `path`, mapped to the model's classes. `split_option`: the caller
    offers --split, so a manifest without such rows may be read at another split instead."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from features.images import BadImage, decode

    names = pq.read_schema(path).names
    cols = ["sample_id", "split", "orig_split", "label_id", "leak", "clip_id", "sequence", "frame_index"]
    if decode_images:
        cols.append("image")
    t = pq.read_table(path, columns=[c for c in cols if c in names])
    present = sorted(set(t.column("split").to_pylist()))
    t = t.filter(pc.equal(t.column("split"), split))
    if t.num_rows == 0:
        raise EvalError(f"{path}: no rows with split={split!r} (it holds {present}); pass a manifest "
                        f"that holds them (e.g. manifests/fer_{split}.parquet)"
                        + (f" or --split one of {present}" if split_option else ""))
    label_ids = t.column("label_id").to_numpy()
    keep = np.array([mapping.to_model[i] is not None for i in label_ids], dtype=bool)
    dropped = {}
    if not keep.any():
        raise EvalError(f"{path}: none of its {len(keep)} rows with split={split!r} is of a class the "
                        f"checkpoint can score (left out: {', '.join(mapping.excluded)}); evaluate on rows "
                        "of the classes it predicts")
    if not keep.all():
        dropped["excluded_classes"] = int((~keep).sum())
        t = t.filter(keep)
        label_ids = label_ids[keep]
    targets = np.array([mapping.to_model[i] for i in label_ids], dtype=int)
    group_kind, groups = None, None
    for key in ("clip_id", "sequence"):
        if key in t.column_names:
            g = t.column(key).to_pylist()
            if any(v is not None for v in g):
                group_kind, groups = key, g
                break
    images = []
    if decode_images:
        bad = []
        for i, b in enumerate(t.column("image").to_pylist()):
            try:
                images.append(decode(b)[0])
            except BadImage as e:
                bad.append((i, str(e)))
        if bad:
            raise EvalError(f"{path}: {len(bad)} test image(s) cannot be decoded (first: row {bad[0][0]}: "
                            f"{bad[0][1]}); re-create the manifest with `pipeline ingest`")
    frames = t.column("frame_index").to_pylist() if "frame_index" in t.column_names else None
    return Rows(t.column("sample_id").to_pylist(), images, targets,
                np.asarray(t.column("leak").to_pylist(), dtype=bool),
                t.column("orig_split").to_pylist(), groups, group_kind, dropped, frames)


def clip_rows(rows: Rows, frames: int) -> Rows:
    """Frame rows -> one row per clip_id holding `frames` frames spread evenly over the clip
    (short clips repeat frames): the trainer's sampler, `train.data.sample_clips`.

    A clip counts as leaked when any of its frames is; its sample_id is its first frame's, which
    is how the trainer keys a clip's text features.
    """
    from train.data import DataError, sample_clips

    try:
        clips = sample_clips(rows.groups, rows.frame_index, rows.targets, frames)
    except DataError as e:
        raise EvalError(f"{e}; a clip has one label") from None
    ids, images, targets, leak, orig = [], [], [], [], []
    for _, members, pick in clips:
        ids.append(rows.sample_ids[members[0]])
        images.append([rows.images[i] for i in pick] if rows.images else None)
        targets.append(int(rows.targets[members[0]]))
        leak.append(bool(rows.leak[members].any()))
        orig.append(rows.orig_split[members[0]])
    return Rows(ids, images if rows.images else [], np.asarray(targets, dtype=int), np.asarray(leak, dtype=bool),
                orig, None, None, rows.dropped | {"frames_per_clip": frames, "frame_rows": len(rows.targets)},
                None, "clip")


# ---- model outputs ------------------------------------------------------------------------------

def _inputs(model, preprocess, images, idx):
    if getattr(model, "input_kind", "image") != "clip":
        return preprocess.apply([images[i] for i in idx])
    if isinstance(images[idx[0]], list):  # whole clips (B, T, C, H, W)
        t = len(images[idx[0]])
        x = preprocess.apply([f for i in idx for f in images[i]])
        return x.reshape(len(idx), t, *x.shape[1:])
    return preprocess.apply([images[i] for i in idx])[:, None]  # frames without clip_id: 1-frame clips


def _tta_views(x, mode: str, size):
    import torch.nn.functional as F
    from torchvision.transforms.v2 import functional as TF

    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, x.flip(-1)]
    big = [round(s * TENCROP_SCALE) for s in size]
    flat = x.reshape(-1, *x.shape[-3:])
    up = F.interpolate(flat, size=big, mode="bilinear", align_corners=False, antialias=True)
    return [v.reshape(*x.shape[:-2], *size) for v in TF.ten_crop(up, list(size))]


def model_logits(model, preprocess, rows: Rows, cfg: EvalConfig, tta: str,
                 extra: dict | None = None, progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Logits (N, C) for every row; TTA views are averaged in logit space."""
    import torch

    n = len(rows.targets)
    out = []
    with torch.inference_mode():
        for start in range(0, n, cfg.batch_size):
            idx = list(range(start, min(n, start + cfg.batch_size)))
            kw = {}
            if extra and "text" in extra:
                kw["text"] = torch.from_numpy(extra["text"][idx]).to(cfg.device)
            if extra and "x" in extra:
                views = [torch.from_numpy(extra["x"][idx])]
            else:
                views = _tta_views(_inputs(model, preprocess, rows.images, idx), tta, preprocess.size)
            acc = None
            for v in views:
                lg = model(v.to(cfg.device), **kw)
                lg = (lg["logits"] if isinstance(lg, dict) else lg).float()
                acc = lg if acc is None else acc + lg
            out.append((acc / len(views)).cpu().numpy())
            if progress is not None:
                progress(len(idx))
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def model_features(model, preprocess, rows: Rows, idx: np.ndarray, cfg: EvalConfig,
                   extra: dict | None = None) -> np.ndarray | None:
    import torch

    if not hasattr(model, "forward_features"):
        return None
    feats = []
    with torch.inference_mode():
        for start in range(0, len(idx), cfg.batch_size):
            part = idx[start:start + cfg.batch_size].tolist()
            kw = {}
            if extra and "text" in extra:
                kw["text"] = torch.from_numpy(extra["text"][part]).to(cfg.device)
            x = torch.from_numpy(extra["x"][part]) if extra and "x" in extra else \
                _inputs(model, preprocess, rows.images, part)
            f = model.forward_features(x.to(cfg.device), **kw)
            feats.append(f.float().reshape(len(part), -1).cpu().numpy())
    return np.concatenate(feats) if feats else None


# ---- variants -----------------------------------------------------------------------------------

def variants(rows: Rows) -> dict[str, np.ndarray]:
    """Row masks for each honest subset that this manifest supports."""
    n = len(rows.targets)
    out = {"all": np.ones(n, dtype=bool)}
    if rows.leak.any():
        out["leak_free"] = ~rows.leak
    private = np.array([s == "PrivateTest" for s in rows.orig_split], dtype=bool)
    if private.any():
        out["private_test"] = private
        if rows.leak.any():
            out["private_test_leak_free"] = private & ~rows.leak
    return out


def _scores(logits, targets, names, mapping: LabelMapping, groups=None) -> dict:
    if groups is not None:
        logits, targets, _ = group_average(logits, targets, groups)
    raw_pred = logits.argmax(axis=1)
    cols = list(mapping.scored)
    remap = {j: k for k, j in enumerate(cols)}
    s = score(logits[:, cols], np.array([remap[t] for t in targets]), [names[j] for j in cols]).as_dict()
    if mapping.zero_shot:
        # also the plain argmax over every model class: a predicted class the target set lacks
        # (neutral on CK+) counts as wrong here, while the main numbers restrict to shared classes
        s["war_unrestricted"] = float((raw_pred == targets).mean())
    return s


def load_member(checkpoint, device: str = "cpu"):
    """`train.checkpoint.load_trained` (None = the shipped model), its errors as EvalError."""
    try:
        return load_trained(checkpoint, device)
    except CheckpointError as e:
        raise EvalError(str(e)) from None


def ensemble_logits(logits: list[np.ndarray]) -> np.ndarray:
    """Members' logits, each (N, K) -> (N, K) float32 log of their mean probability, so that its
    softmax is that mean (probability averaging, as `train eval -c A -c B` scores an ensemble).
    Probabilities are floored at 1e-12, so a class every member rules out stays finite."""
    probs = np.mean([softmax(lg) for lg in logits], axis=0)
    return np.log(np.clip(probs, 1e-12, None)).astype(np.float32)


def default_out(checkpoints: list[Path], manifest: Path) -> Path:
    """Where `train eval` writes without --out: `<run dir>/eval-<manifest>` beside a checkpoint
    of the user's, but `runs/eval/<name>-<manifest>` (under the working folder) for one shipped
    inside the package (train/weights/), which must stay as installed."""
    first = Path(checkpoints[0])
    base = first if first.is_dir() else first.parent
    tag = manifest.stem if len(checkpoints) == 1 else f"ensemble{len(checkpoints)}-{manifest.stem}"
    package = Path(__file__).resolve().parent
    if base.resolve().is_relative_to(package):
        name = first.name if first.is_dir() else first.stem
        return Path("runs") / "eval" / f"{name}-{tag}"
    return base / f"eval-{tag}"


def evaluate(checkpoint: str | Path | None | list, manifest: str | Path, cfg: EvalConfig,
             out_dir: str | Path | None = None,
             progress: Callable[[int], None] | None = None) -> dict:
    """Score `checkpoint` on `manifest`'s test rows; write report.json, report.md and plots.

    A list of several checkpoints is scored as an ensemble (the mean of their probabilities,
    each member with its own preprocessing); every member's own plain scores are reported
    beside it. Members must predict the same classes in the same order."""
    from features.manifest import ManifestError, open_manifest

    t0 = time.perf_counter()
    manifest = Path(manifest)
    try:
        _, manifest_ls = open_manifest(manifest)
    except ManifestError as e:
        raise EvalError(str(e)) from None
    members = list(checkpoint) if isinstance(checkpoint, (list, tuple)) else [checkpoint]
    if not members:
        raise EvalError("no checkpoint given")
    model, sidecar = load_member(members[0], cfg.device)
    names = class_names(sidecar)
    mapping = label_mapping(sidecar, manifest_ls, names, cfg.label_map)
    kind = getattr(model, "input_kind", "image")
    rows = read_rows(manifest, cfg.split, mapping, decode_images=kind != "feature")
    if kind == "clip" and rows.group_kind == "clip_id" and all(g is not None for g in rows.groups):
        rows = clip_rows(rows, int(getattr(model.config, "frames", 16)))
    if cfg.tta != "none" and kind == "feature":
        raise EvalError("--tta needs images; this model takes precomputed embeddings")

    def member_logits(m, pre, extra) -> dict[str, np.ndarray]:
        out = {"plain": model_logits(m, pre, rows, cfg, "none", extra, progress)}
        if cfg.tta != "none":
            out[cfg.tta] = model_logits(m, pre, rows, cfg, cfg.tta, extra, progress)
        return out

    def inputs_of(m, sc):
        return (preprocess_of(sc) if kind != "feature" else None), _extra_inputs(m, rows, cfg)

    preprocess, extra = inputs_of(model, sidecar)  # the first member's, kept for the plots
    first = member_logits(model, preprocess, extra)
    per_member = [first]
    for ckpt in members[1:]:
        m, sc = load_member(ckpt, cfg.device)
        if class_names(sc) != names or getattr(m, "input_kind", "image") != kind:
            raise EvalError(f"{ckpt}: an ensemble needs members with the same classes and input; it "
                            f"predicts {list(class_names(sc))} from {getattr(m, 'input_kind', 'image')} "
                            f"input, {members[0]} predicts {list(names)} from {kind} input; ensemble "
                            "checkpoints trained on the same classes and input")
        per_member.append(member_logits(m, *inputs_of(m, sc)))
        del m
    logits = first if len(members) == 1 else \
        {mode: ensemble_logits([pm[mode] for pm in per_member]) for mode in first}
    def label(c) -> str:
        return str(c) if c is not None else "shipped"

    report = {
        "checkpoint": label(members[0]) if len(members) == 1 else [label(c) for c in members],
        "manifest": str(manifest), "split": cfg.split, "config": _jsonable(asdict(cfg)),
        "model": sidecar.get("model", {}).get("name") if len(members) == 1 else f"ensemble of {len(members)}",
        "class_names": list(names),
        # what the trainer recorded when it chose this checkpoint (on validation rows only)
        "checkpoint_meta": {k: sidecar.get(k) for k in ("epoch", "selected_on", "metrics")},
        "manifest_label_set": {"name": manifest_ls.name, "names": list(manifest_ls.names)},
        "label_mapping": mapping.as_dict(manifest_ls, names),
        "rows": {"unit": rows.unit, "scored": int(len(rows.targets)), "leaked": int(rows.leak.sum()),
                 **rows.dropped},
        "variants": {},
    }
    if len(members) > 1:
        report["members"] = [
            {"checkpoint": label(c),
             **{mode: {k: _scores(pm[mode], rows.targets, names, mapping)[k] for k in ("war", "uar", "macro_f1")}
                for mode in pm}}
            for c, pm in zip(members, per_member)]
    for vname, mask in variants(rows).items():
        report["variants"][vname] = {mode: _scores(lg[mask], rows.targets[mask], names, mapping)
                                     for mode, lg in logits.items()}
    if rows.groups is not None:
        report["variants"][f"per_{rows.group_kind}"] = {
            mode: _scores(lg, rows.targets, names, mapping, rows.groups) for mode, lg in logits.items()}
        report["rows"]["groups"] = len(set(g for g in rows.groups if g is not None))
    report["seconds"] = round(time.perf_counter() - t0, 2)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.plots:
            # t-SNE and Grad-CAM are of the first member; the score plots are of `logits`
            report["plots"] = write_plots(out_dir, model, preprocess, rows, logits["plain"], names, mapping,
                                          cfg, extra, members[0])
        write_report(report, out_dir)
    return report


def _extra_inputs(model, rows: Rows, cfg: EvalConfig) -> dict | None:
    from features.encoders import FeatureFileError, read_features

    extra = {}
    try:
        if getattr(model, "input_kind", "image") == "feature":
            if cfg.image_features is None:
                raise EvalError("this model takes precomputed image embeddings: pass --image-features F "
                                "(made by `pipeline embed` on this manifest)")
            extra["x"] = read_features(cfg.image_features, rows.sample_ids)
        if getattr(model, "needs_text", False):
            if cfg.text_features is None:
                raise EvalError("this model fuses caption text: pass --text-features F (made by "
                                "`pipeline embed` on this manifest's captions)")
            extra["text"] = read_features(cfg.text_features, rows.sample_ids)
    except FeatureFileError as e:
        raise EvalError(str(e)) from None
    return extra or None


def _jsonable(d):
    return json.loads(json.dumps(d, default=str))


# ---- plots and report files ---------------------------------------------------------------------

def write_plots(out_dir: Path, model, preprocess, rows: Rows, logits: np.ndarray, names, mapping,
                cfg: EvalConfig, extra, checkpoint) -> dict:
    from train import plots

    cols = list(mapping.scored)
    shown = [names[j] for j in cols]
    remap = {j: k for k, j in enumerate(cols)}
    targets = np.array([remap[t] for t in rows.targets])
    probs = softmax(logits[:, cols])
    s = score(logits[:, cols], targets, shown)
    written = {
        "confusion_counts": plots.confusion(s.confusion, shown, out_dir / "confusion_counts.png"),
        "confusion_normalised": plots.confusion(s.confusion, shown, out_dir / "confusion_normalised.png",
                                                normalise=True),
        "roc": plots.roc(probs, targets, shown, out_dir / "roc.png"),
        "pr": plots.pr(probs, targets, shown, out_dir / "pr.png"),
        "reliability": plots.reliability(reliability_bins(probs, targets), s.ece, out_dir / "reliability.png"),
    }
    if len(targets) >= 5:
        rng = np.random.default_rng(0)
        idx = np.sort(rng.choice(len(targets), size=min(cfg.tsne_points, len(targets)), replace=False))
        feats = model_features(model, preprocess, rows, idx, cfg, extra)
        if feats is not None:
            written["tsne"] = plots.tsne(feats, targets[idx], shown, out_dir / "tsne.png",
                                         max_points=cfg.tsne_points)
    worst = worst_confused(probs, targets, WORST_CONFUSED)
    if len(worst) and rows.images:
        pred = probs.argmax(axis=1)
        written["worst_confused"] = plots.thumbnails(
            [_thumb(rows.images[i]) for i in worst],
            [f"{rows.sample_ids[i][-10:]}\ntrue {shown[targets[i]]}\npred {shown[pred[i]]} {probs[i, pred[i]]:.2f}"
             for i in worst],
            out_dir / "worst_confused.png", title="most confident mistakes")
    log = training_log_of(checkpoint)
    if log is not None:
        curve = plots.training_curves(plots.read_log(log), out_dir / "training_curves.png")
        if curve is not None:
            written["training_curves"] = curve
    return {k: Path(v).name for k, v in written.items()}


WORST_CONFUSED = 16  # thumbnails in the report


def worst_confused(probs: np.ndarray, targets: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` wrong predictions made with the highest probability, most confident first."""
    pred = probs.argmax(axis=1)
    wrong = np.flatnonzero(pred != targets)
    return wrong[np.argsort(-probs[wrong, pred[wrong]], kind="stable")][:n]


def _thumb(image):
    """A row's picture: the middle frame of a clip row, else the image itself."""
    return image[len(image) // 2] if isinstance(image, list) else image


def training_log_of(checkpoint) -> Path | None:
    """The training log beside the checkpoint; for a `train calibrate` output, its source run's."""
    if checkpoint is None:
        return None
    p = Path(checkpoint)
    d = p if p.is_dir() else p.parent
    log = d / "log.jsonl"
    if log.is_file():
        return log
    try:
        from train.checkpoint import CheckpointError, read_sidecar

        src = ((read_sidecar(p).get("logit_adjustment") or {}).get("source") or {}).get("path")
    except (CheckpointError, OSError, ValueError):
        return None
    log = Path(src).parent / "log.jsonl" if src else None
    return log if log is not None and log.is_file() else None
