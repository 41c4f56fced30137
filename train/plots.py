"""PNG figures for an evaluation report (matplotlib, Agg backend: no display needed).

Each function draws one figure from plain arrays and writes it to `path`; none reads files or
knows about checkpoints, so each is testable on its own.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DPI = 110


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    _plt().close(fig)
    return path


def confusion(cm: np.ndarray | list, class_names, path: str | Path, normalise: bool = False,
              title: str = "") -> Path:
    """Counts, or rows normalised to recall (each true class sums to 1)."""
    plt = _plt()
    cm = np.asarray(cm, dtype=np.float64)
    shown = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1) if normalise else cm
    n = len(class_names)
    size = max(4.5, 0.65 * n + 2)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(shown, cmap="Blues", vmin=0, vmax=1 if normalise else max(shown.max(), 1))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or ("confusion matrix (row-normalised)" if normalise else "confusion matrix (counts)"))
    threshold = shown.max() / 2 if shown.size else 0
    for i in range(n):
        for j in range(n):
            text = f"{shown[i, j]:.2f}" if normalise else f"{int(cm[i, j])}"
            ax.text(j, i, text, ha="center", va="center", fontsize=8,
                    color="white" if shown[i, j] > threshold else "black")
    return _save(fig, path)


def _one_vs_rest(probs: np.ndarray, targets: np.ndarray, class_names, path, kind: str) -> Path:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        y = (np.asarray(targets) == k).astype(int)
        if y.min() == y.max():
            continue  # undefined for a class absent from these rows; the legend omits it
        if kind == "roc":
            fpr, tpr, _ = roc_curve(y, probs[:, k])
            ax.plot(fpr, tpr, color=cmap(k), lw=1.4, label=f"{name} (AUC {auc(fpr, tpr):.2f})")
        else:
            prec, rec, _ = precision_recall_curve(y, probs[:, k])
            ap = average_precision_score(y, probs[:, k])
            ax.step(rec, prec, where="post", color=cmap(k), lw=1.4, label=f"{name} (AP {ap:.2f})")
    if kind == "roc":
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.set_title("ROC, one-vs-rest")
    else:
        ax.set_xlabel("recall")
        ax.set_ylabel("precision")
        ax.set_title("precision-recall, one-vs-rest")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower right" if kind == "roc" else "best")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def roc(probs, targets, class_names, path) -> Path:
    return _one_vs_rest(np.asarray(probs), targets, class_names, path, "roc")


def pr(probs, targets, class_names, path) -> Path:
    return _one_vs_rest(np.asarray(probs), targets, class_names, path, "pr")


def reliability(bins: dict, ece: float, path: str | Path) -> Path:
    """Accuracy per confidence bin against the diagonal, with the bin counts below."""
    plt = _plt()
    edges = np.asarray(bins["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    width = edges[1] - edges[0]
    acc = np.array([a if a is not None else 0.0 for a in bins["accuracy"]])
    conf = np.array([c if c is not None else 0.0 for c in bins["confidence"]])
    counts = np.asarray(bins["count"])
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(5.5, 6), height_ratios=(3, 1), sharex=True)
    ax.bar(centers, acc, width=width * 0.95, color="tab:blue", edgecolor="black", lw=0.5, label="accuracy")
    has = counts > 0
    # the gap as a hatched outline, so it reads the same whether it lies above or inside the bar
    ax.bar(centers[has], np.abs(conf - acc)[has], bottom=np.minimum(acc, conf)[has], width=width * 0.95,
           facecolor="none", edgecolor="tab:red", hatch="///", lw=0.8, label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(f"reliability diagram (ECE {ece:.3f}, {len(counts)} bins)")
    ax.legend(fontsize=8, loc="upper left")
    axc.bar(centers, counts, width=width * 0.95, color="grey")
    axc.set_xlabel("confidence (top-1 probability)")
    axc.set_ylabel("rows")
    axc.set_xlim(0, 1)
    return _save(fig, path)


def tsne(features: np.ndarray, targets: np.ndarray, class_names, path: str | Path,
         max_points: int = 2000, seed: int = 0) -> Path:
    """2-D t-SNE of penultimate features, at most `max_points` (stratified-ish random subsample)."""
    from sklearn.manifold import TSNE

    plt = _plt()
    features = np.asarray(features, dtype=np.float32)
    targets = np.asarray(targets)
    rng = np.random.default_rng(seed)
    idx = np.arange(len(targets))
    if len(idx) > max_points:
        idx = np.sort(rng.choice(idx, size=max_points, replace=False))
    x = features[idx]
    # perplexity must stay below the number of points; 30 is sklearn's default for large sets
    perplexity = float(min(30, max(2, (len(idx) - 1) // 3)))
    from threadpoolctl import threadpool_limits

    # one OpenMP thread: measured 8 s vs 30 s for 2,000 points on this busy 2-core machine
    # (the threads spin-wait against each other); at <= 2,000 points one thread is enough anywhere
    with threadpool_limits(limits=1):
        emb = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed,
                   max_iter=500).fit_transform(x)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        m = targets[idx] == k
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], s=8, color=cmap(k), label=name, alpha=0.8)
    ax.set_title(f"t-SNE of forward_features ({len(idx)} rows)")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2, loc="best")
    return _save(fig, path)


def read_log(path: str | Path) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        line = line.strip()
        if line:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a run killed mid-write leaves a partial last line
    return rows


def training_curves(log_rows: list[dict], path: str | Path) -> Path | None:
    """Loss and metric curves per epoch from a run's log.jsonl; None when it has nothing to plot."""
    from matplotlib.ticker import MaxNLocator

    plt = _plt()
    rows = [r for r in log_rows if isinstance(r, dict) and "epoch" in r]
    if not rows:
        return None
    numeric = sorted({k for r in rows for k, v in r.items()
                      if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)})
    losses = [k for k in numeric if "loss" in k]
    scores = [k for k in numeric if k not in losses and any(s in k for s in ("acc", "uar", "f1", "war"))]
    if not losses and not scores:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, keys, title in ((axes[0], losses, "loss"), (axes[1], scores, "validation / training metrics")):
        for k in keys:
            pts = [(r["epoch"], r[k]) for r in rows if isinstance(r.get(k), (int, float))]
            if pts:
                ax.plot(*zip(*pts), marker="o", ms=3, label=k)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if keys:
            ax.legend(fontsize=8)
    return _save(fig, path)


def logit_adjustment_curve(curve: list[dict], tau: float, path: str | Path) -> Path:
    """`train calibrate`'s validation accuracy, UAR and macro-F1 against tau, the chosen tau marked."""
    plt = _plt()
    taus = [r["tau"] for r in curve]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (("acc", "accuracy (WAR)"), ("uar", "UAR (mean recall)"), ("f1", "macro-F1")):
        ax.plot(taus, [100 * r[key] for r in curve], label=label)
    chosen = next(r for r in curve if r["tau"] == tau)
    ax.axvline(tau, color="grey", ls="--", lw=1)
    ax.annotate(f"tau = {tau:g}", (tau, 100 * chosen["uar"]), textcoords="offset points",
                xytext=(6, -14), fontsize=8)
    ax.set_xlabel("tau (logits - tau * log prior)")
    ax.set_ylabel("validation %")
    ax.set_title("Logit adjustment on the validation split")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def thumbnails(images, captions, path: str | Path, cols: int = 8, title: str = "") -> Path:
    """A grid of small images (uint8 grey or RGB, any sizes) with a caption under each."""
    plt = _plt()
    n = len(images)
    if n == 0:
        raise ValueError("thumbnails: no images to draw")
    cols = max(1, min(cols, n))
    rows = -(-n // cols)
    # constrained layout keeps each three-line caption clear of the row above it
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 2.1 * rows), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, cap in zip(axes.flat, images, captions):
        im = np.asarray(im)
        ax.imshow(im, cmap="gray" if im.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(cap, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _to_rgb_array(fig) -> np.ndarray:
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    _plt().close(fig)
    return rgb


def face_panel(crop: np.ndarray, cam_overlay: np.ndarray | None, topk, title: str = "") -> np.ndarray:
    """One face as an RGB uint8 array: the crop, its Grad-CAM overlay beside it (when given) and
    its top-k probabilities as horizontal bars. `topk` is ((label, prob), ...), best first."""
    plt = _plt()
    panels = 3 if cam_overlay is not None else 2
    fig, axes = plt.subplots(1, panels, figsize=(2.6 * panels + 0.6, 2.6),
                             gridspec_kw={"width_ratios": [1] * (panels - 1) + [1.5]})
    crop = np.asarray(crop)
    axes[0].imshow(crop, cmap="gray" if crop.ndim == 2 else None, vmin=0, vmax=255)
    axes[0].set_title("face", fontsize=9)
    if cam_overlay is not None:
        axes[1].imshow(cam_overlay)
        axes[1].set_title("Grad-CAM", fontsize=9)
    for ax in axes[:-1]:
        ax.axis("off")
    bars = axes[-1]
    labels = [lab for lab, _ in topk][::-1]
    probs = [p for _, p in topk][::-1]
    bars.barh(labels, probs, color=["tab:blue"] * (len(probs) - 1) + ["tab:orange"])
    for y, p in enumerate(probs):
        bars.text(min(p + 0.02, 0.8), y, f"{p:.2f}", va="center", fontsize=8)
    bars.set_xlim(0, 1)
    bars.set_xlabel("probability", fontsize=8)
    bars.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _to_rgb_array(fig)


def label_timeline(times_s, probs: np.ndarray, class_names, labels, path: str | Path | None = None):
    """Smoothed class probabilities of one face over a video (lines), the label as a strip below.

    times_s (T,) seconds; probs (T, C); labels (T,) class index or -1 for frames without a face.
    Writes a PNG to `path`, or returns an RGB uint8 array when `path` is None."""
    plt = _plt()
    times_s = np.asarray(times_s, dtype=float)
    probs = np.asarray(probs, dtype=float)
    labels = np.asarray(labels)
    fig, (ax, strip) = plt.subplots(2, 1, figsize=(8, 3.8), height_ratios=(4, 1), sharex=True)
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    for k, name in enumerate(class_names):
        ax.plot(times_s, probs[:, k], color=cmap(k), lw=1.4, label=name)
    ax.set_ylim(0, 1)
    ax.set_ylabel("smoothed probability")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=min(4, len(class_names)), loc="upper right")
    ax.set_title("label over time (largest face)")
    colours = np.array([cmap(int(k)) if k >= 0 else (1, 1, 1, 1) for k in labels])
    strip.imshow(colours[None], aspect="auto",
                 extent=(times_s.min(), times_s.max() if len(times_s) > 1 else times_s.min() + 1, 0, 1))
    strip.set_yticks([])
    strip.set_xlabel("time (s); label strip, white where no face was found")
    fig.tight_layout()
    return _save(fig, path) if path is not None else _to_rgb_array(fig)
