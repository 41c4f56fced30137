"""train.metrics against scikit-learn (and by hand) on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score,
    precision_recall_fscore_support, recall_score, roc_auc_score,
)

from train.metrics import expected_calibration_error, group_average, reliability_bins, score, softmax

NAMES = ("angry", "happy", "sad", "neutral")


@pytest.fixture
def fixed():
    rng = np.random.default_rng(7)
    targets = rng.integers(0, 4, size=400)
    logits = rng.normal(size=(400, 4))
    logits[np.arange(400), targets] += 1.2  # better than chance, far from perfect
    return logits, targets


def test_headline_metrics_match_sklearn(fixed):
    logits, targets = fixed
    s = score(logits, targets, NAMES)
    pred = logits.argmax(1)
    assert s.n == 400
    assert s.war == pytest.approx(accuracy_score(targets, pred))
    assert s.uar == pytest.approx(recall_score(targets, pred, average="macro"))
    assert s.uar == pytest.approx(balanced_accuracy_score(targets, pred))
    assert s.macro_f1 == pytest.approx(f1_score(targets, pred, average="macro"))
    assert s.confusion == confusion_matrix(targets, pred).tolist()
    assert 0.3 < s.war < 0.9  # the fixture is what it claims to be


def test_per_class_and_aucs_match_sklearn(fixed):
    logits, targets = fixed
    s = score(logits, targets, NAMES)
    probs = softmax(logits)
    p, r, f, sup = precision_recall_fscore_support(targets, logits.argmax(1))
    auc = roc_auc_score(targets, probs, multi_class="ovr", average=None)
    for k, name in enumerate(NAMES):
        c = s.per_class[name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[k], r[k], f[k], sup[k]))
        assert c["roc_auc"] == pytest.approx(auc[k])
        assert c["pr_auc"] == pytest.approx(average_precision_score(targets == k, probs[:, k]))


def test_softmax_rows_sum_to_one_and_are_stable():
    p = softmax(np.array([[1000.0, 0.0], [0.0, 0.0]]))
    assert np.allclose(p.sum(1), 1)
    assert p[0, 0] == pytest.approx(1.0) and p[1, 0] == pytest.approx(0.5)


def test_ece_by_hand():
    # two rows at 0.9 confidence, one right one wrong -> gap 0.4 in that bin;
    # two rows at 0.6, both right -> gap 0.4; ECE = 0.5*0.4 + 0.5*0.4
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.4, 0.6]])
    targets = np.array([0, 1, 0, 1])
    assert expected_calibration_error(probs, targets) == pytest.approx(0.4)
    perfect = np.eye(3)[[0, 1, 2, 1]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2, 1])) == pytest.approx(0.0)
    bins = reliability_bins(probs, targets)
    assert sum(bins["count"]) == 4 and len(bins["count"]) == 15


def test_ece_matches_sklearn_calibration_curve_when_binary():
    from sklearn.calibration import calibration_curve

    rng = np.random.default_rng(1)
    p1 = rng.uniform(0.5, 1.0, size=2000)  # top-label probabilities of the positive class
    y = (rng.uniform(size=2000) < p1 ** 2).astype(int)
    probs = np.stack([1 - p1, p1], 1)
    frac, mean = calibration_curve(y, p1, n_bins=15, strategy="uniform")
    # both bin by the same uniform edges; weights are the counts per non-empty bin
    idx = np.clip(np.ceil(p1 * 15).astype(int) - 1, 0, 14)
    counts = np.bincount(idx, minlength=15)
    counts = counts[counts > 0]
    want = float(np.sum(counts / 2000 * np.abs(frac - mean)))
    assert expected_calibration_error(probs, y) == pytest.approx(want, abs=1e-9)


def test_absent_class_gives_none_auc_not_a_crash():
    logits = np.array([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0]])
    s = score(logits, np.array([0, 1, 0]), ("a", "b", "c"))
    assert s.per_class["c"]["roc_auc"] is None and s.per_class["c"]["support"] == 0
    assert s.uar == pytest.approx(1.0)  # UAR over the classes that occur


def test_group_average_averages_logits_per_clip():
    logits = np.array([[1.0, 0.0], [0.0, 3.0], [2.0, 0.0], [0.0, 1.0]])
    targets = np.array([1, 1, 0, 0])
    out, t, keys = group_average(logits, targets, ["c1", "c1", None, "c2"])
    assert keys == ["c1", None, "c2"]
    assert np.allclose(out, [[0.5, 1.5], [2.0, 0.0], [0.0, 1.0]])
    assert t.tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="mixes labels"):
        group_average(logits, np.array([0, 1, 0, 0]), ["c1", "c1", None, None])


def test_empty_rows_refused():
    with pytest.raises(ValueError, match="no rows"):
        score(np.zeros((0, 2)), np.zeros(0, int), ("a", "b"))
