"""Classification metrics for evaluation reports, scikit-learn wherever it has them.

Everything takes logits (N, C) and integer targets (N,) in the model's class order. Scores that
need every class present (ROC-AUC, PR-AUC) are reported as None for a class with no positive
or no negative row, rather than failing the whole report.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label ECE with equal-width confidence bins (Guo et al. 2017).

    Hand-written because scikit-learn has no multi-class ECE: its calibration_curve is binary and
    drops empty bins without returning their weights, which ECE needs.
    """
    probs = np.asarray(probs, dtype=np.float64)
    targets = np.asarray(targets)
    if len(targets) == 0:
        return float("nan")
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == targets).astype(np.float64)
    # right-closed bins: a confidence of exactly 1.0 falls in the last bin, 0 never occurs
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def reliability_bins(probs: np.ndarray, targets: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Per-bin confidence, accuracy and count: what the reliability diagram draws."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(targets)
    idx = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    out = {"edges": np.linspace(0, 1, n_bins + 1).tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        m = idx == b
        out["count"].append(int(m.sum()))
        out["confidence"].append(float(conf[m].mean()) if m.any() else None)
        out["accuracy"].append(float(correct[m].mean()) if m.any() else None)
    return out


def group_average(logits: np.ndarray, targets: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray, list]:
    """Average logits over rows sharing a group key (DFEW clip_id, CK+ sequence) before scoring.

    Rows whose key is None stay on their own. A group whose rows disagree on the target is an
    error in the manifest (a clip has one label), so it raises instead of picking one.
    """
    logits = np.asarray(logits, dtype=np.float64)
    targets = np.asarray(targets)
    order: dict = {}
    for i, g in enumerate(groups):
        key = ("row", i) if g is None else ("group", g)
        order.setdefault(key, []).append(i)
    out_logits, out_targets, keys = [], [], []
    for key, rows in order.items():
        t = np.unique(targets[rows])
        if len(t) != 1:
            raise ValueError(f"group {key[1]!r} mixes labels {t.tolist()}; a clip/sequence must have one label")
        out_logits.append(logits[rows].mean(axis=0))
        out_targets.append(int(t[0]))
        keys.append(key[1] if key[0] == "group" else None)
    return np.stack(out_logits) if out_logits else logits[:0], np.asarray(out_targets, dtype=int), keys


# The names these scores have always had in log.csv / log.jsonl, checkpoint sidecars
# ("val_acc", "selected_on": "val_uar"), calibrate.json and `train run --select-metric`:
# kept there so earlier runs resume, plot and compare; the code says WAR, UAR, macro-F1.
LOG_NAMES = {"war": "acc", "uar": "uar", "macro_f1": "f1"}


def validation_scores(logits, targets, num_classes: int) -> dict[str, float]:
    """WAR (accuracy), UAR (balanced accuracy: mean per-class recall) and macro-F1 over all
    `num_classes` (a class absent from a small val split scores 0), from scikit-learn: the
    trainer's per-epoch scores. Logits (N, C) and targets (N,), numpy arrays or CPU tensors."""
    import warnings

    from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

    y = np.asarray(targets)
    p = np.asarray(logits).argmax(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes absent from a small val split
        return {
            "war": float(accuracy_score(y, p)),
            "uar": float(balanced_accuracy_score(y, p)),
            "macro_f1": float(f1_score(y, p, average="macro", labels=list(range(num_classes)), zero_division=0)),
        }


@dataclass(frozen=True)
class Scores:
    """Every number of one evaluation, JSON-ready through `as_dict`."""

    n: int
    war: float
    uar: float
    macro_f1: float
    ece: float
    nll: float
    per_class: dict
    confusion: list

    def as_dict(self) -> dict:
        return {"n": self.n, "war": self.war, "uar": self.uar, "macro_f1": self.macro_f1,
                "ece": self.ece, "nll": self.nll, "per_class": self.per_class, "confusion": self.confusion}


def _auc_or_none(fn, y: np.ndarray, s: np.ndarray) -> float | None:
    if y.min() == y.max():
        return None  # a class absent (or the only one) in these rows: AUC is undefined
    return float(fn(y, s))


def score(logits: np.ndarray, targets: np.ndarray, class_names: tuple[str, ...] | list[str]) -> Scores:
    """WAR, UAR, macro-F1, per-class P/R/F1/support, one-vs-rest ROC-AUC and PR-AUC, ECE."""
    from sklearn.metrics import (
        accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix,
        f1_score, log_loss, precision_recall_fscore_support, roc_auc_score,
    )

    targets = np.asarray(targets, dtype=int)
    n_cls = len(class_names)
    if len(targets) == 0:
        raise ValueError("no rows to score")
    probs = softmax(logits)
    pred = probs.argmax(axis=1)
    labels = list(range(n_cls))
    p, r, f, s = precision_recall_fscore_support(targets, pred, labels=labels, zero_division=0)
    per_class = {}
    for k, name in enumerate(class_names):
        y = (targets == k).astype(int)
        per_class[name] = {
            "precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]), "support": int(s[k]),
            "roc_auc": _auc_or_none(roc_auc_score, y, probs[:, k]),
            "pr_auc": _auc_or_none(average_precision_score, y, probs[:, k]),
        }
    present = sorted(set(targets.tolist()))
    return Scores(
        n=int(len(targets)),
        war=float(accuracy_score(targets, pred)),
        # UAR over the classes that occur in these rows (sklearn's balanced accuracy): a class the
        # test rows lack (CK+ has no neutral) would otherwise count as a recall of 0
        uar=float(balanced_accuracy_score(targets, pred)),
        macro_f1=float(f1_score(targets, pred, labels=present, average="macro", zero_division=0)),
        ece=expected_calibration_error(probs, targets),
        nll=float(log_loss(targets, np.clip(probs, 1e-12, 1.0), labels=labels)),
        per_class=per_class,
        confusion=confusion_matrix(targets, pred, labels=labels).tolist(),
    )
