"""train.metrics against scikit-learn (and by hand) on fixed predictions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score, average_precision_score, balanced_accuracy_score, confusion_matrix, f1_score,
    log_loss, precision_recall_fscore_support, recall_score, roc_auc_score,
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


# ---- the awkward cases, each against scikit-learn -------------------------------------------------
# Four model classes; the targets hold three of them. "d" never occurs but is predicted twice (an
# absent class the model still guesses), "c" occurs in a single row, and every "b" row is wrong.
# docs/evaluate.md: UAR and macro-F1 average over the classes present in the targets, so "d"
# (F1 0 by zero division) must not drag them down.
AWK_NAMES = ("a", "b", "c", "d")
# scikit-learn warns that "d" is predicted but never true: that is the case under test
awkward_case = pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")


@pytest.fixture
def awkward():
    rng = np.random.default_rng(3)
    targets = np.array([0] * 6 + [1] * 4 + [2])
    pred = np.array([0, 0, 0, 0, 0, 3] + [0, 2, 3, 0] + [2])
    logits = rng.normal(0, 0.3, size=(len(targets), 4))
    logits[np.arange(len(targets)), pred] += 2.0 + rng.uniform(0, 1, len(targets))
    assert (logits.argmax(1) == pred).all()
    return logits, targets, pred


@awkward_case
def test_headline_metrics_with_absent_single_row_and_all_wrong_classes(awkward):
    logits, targets, pred = awkward
    s = score(logits, targets, AWK_NAMES)
    present = [0, 1, 2]
    assert s.war == pytest.approx(accuracy_score(targets, pred)) == pytest.approx(6 / 11)
    assert s.uar == pytest.approx(balanced_accuracy_score(targets, pred))
    assert s.uar == pytest.approx(recall_score(targets, pred, labels=present, average="macro"))
    assert s.uar == pytest.approx((5 / 6 + 0 + 1) / 3)  # by hand: a 5/6, b 0/4, c 1/1
    want_f1 = f1_score(targets, pred, labels=present, average="macro", zero_division=0)
    assert s.macro_f1 == pytest.approx(want_f1)
    # the two readings of "macro" differ on this case, so the test tells them apart
    over_all = f1_score(targets, pred, labels=[0, 1, 2, 3], average="macro", zero_division=0)
    over_seen = f1_score(targets, pred, average="macro", zero_division=0)  # union of true and predicted
    assert abs(want_f1 - over_all) > 0.05 and abs(want_f1 - over_seen) > 0.05
    # a F1 = 2*(5/7)*(5/6)/((5/7)+(5/6)) = 10/13, b 0, c F1 = 2*(1/2)*1/(1/2+1) = 2/3
    assert s.macro_f1 == pytest.approx((10 / 13 + 0 + 2 / 3) / 3)
    assert s.confusion == confusion_matrix(targets, pred, labels=[0, 1, 2, 3]).tolist()
    assert s.nll == pytest.approx(log_loss(targets, softmax(logits), labels=[0, 1, 2, 3]))


@awkward_case
def test_per_class_and_aucs_with_awkward_classes(awkward):
    logits, targets, pred = awkward
    s = score(logits, targets, AWK_NAMES)
    probs = softmax(logits)
    p, r, f, sup = precision_recall_fscore_support(targets, pred, labels=[0, 1, 2, 3], zero_division=0)
    for k, name in enumerate(AWK_NAMES):
        c = s.per_class[name]
        assert (c["precision"], c["recall"], c["f1"], c["support"]) == pytest.approx((p[k], r[k], f[k], sup[k]))
    assert s.per_class["b"]["recall"] == 0.0 and s.per_class["c"]["support"] == 1
    for k in (0, 1, 2):  # present classes: one-vs-rest AUCs as scikit-learn gives them
        y = (targets == k).astype(int)
        assert s.per_class[AWK_NAMES[k]]["roc_auc"] == pytest.approx(roc_auc_score(y, probs[:, k]))
        assert s.per_class[AWK_NAMES[k]]["pr_auc"] == pytest.approx(average_precision_score(y, probs[:, k]))
    # the single-row class has both positives and negatives: a number, not None
    assert 0.0 < s.per_class["c"]["roc_auc"] <= 1.0 and 0.0 < s.per_class["c"]["pr_auc"] <= 1.0
    assert s.per_class["d"]["roc_auc"] is None and s.per_class["d"]["pr_auc"] is None
    # a class that is every row has no negatives: undefined too, not 1.0 or a crash
    only = score(logits[:6], targets[:6], AWK_NAMES)
    assert only.per_class["a"]["roc_auc"] is None and only.per_class["a"]["pr_auc"] is None


def _sklearn_top_label_ece(probs, targets, n_bins=15):
    """Top-label ECE through scikit-learn's binary calibration_curve on (correct, confidence)."""
    from sklearn.calibration import calibration_curve

    conf = probs.max(1)
    correct = (probs.argmax(1) == targets).astype(int)
    frac, mean = calibration_curve(correct, conf, n_bins=n_bins, strategy="uniform")
    edges = np.linspace(0, 1, n_bins + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], conf), minlength=n_bins)  # sklearn's own binning
    counts = counts[counts > 0]
    return float(np.sum(counts / len(conf) * np.abs(frac - mean)))


@awkward_case
def test_multiclass_ece_matches_sklearn_on_awkward_rows(awkward):
    logits, targets, _ = awkward
    probs = softmax(logits)
    assert score(logits, targets, AWK_NAMES).ece == pytest.approx(_sklearn_top_label_ece(probs, targets))
    rng = np.random.default_rng(11)
    t = rng.integers(0, 3, 600)
    lg = rng.normal(size=(600, 4)) * rng.uniform(0.5, 3, (600, 1))
    lg[np.arange(600), t] += 1.0
    assert expected_calibration_error(softmax(lg), t) == pytest.approx(_sklearn_top_label_ece(softmax(lg), t))
    # all wrong at full confidence: the gap is the whole confidence
    wrong = np.eye(3)[[1, 2, 0]]
    assert expected_calibration_error(wrong, np.array([0, 1, 2])) == pytest.approx(1.0)


def test_reliability_bins_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 1.0 (right, lands in the last bin);
    # 5 bins of width 0.2, right-closed: 0.6 -> bin 2, 0.9 and 1.0 -> bin 4
    probs = np.array([[0.9, 0.1], [0.1, 0.9], [0.6, 0.4], [1.0, 0.0]])
    targets = np.array([0, 0, 0, 0])
    b = reliability_bins(probs, targets, n_bins=5)
    assert b["edges"] == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert b["count"] == [0, 0, 1, 0, 3]
    assert b["confidence"][:4] == [None, None, pytest.approx(0.6), None]
    assert b["confidence"][4] == pytest.approx((0.9 + 0.9 + 1.0) / 3)
    assert b["accuracy"][:4] == [None, None, 1.0, None]
    assert b["accuracy"][4] == pytest.approx(2 / 3)
    # the default is 15 bins, and the same rows give the ECE's bins
    assert len(reliability_bins(probs, targets)["count"]) == 15 == len(reliability_bins(probs, targets)["edges"]) - 1
    edge = reliability_bins(np.array([[0.2, 0.8]]), np.array([1]), n_bins=5)  # exactly on an edge: the lower bin
    assert edge["count"] == [0, 0, 0, 1, 0]


def test_ece_bins_are_right_closed_and_default_to_15():
    # 0.6 sits exactly on an edge of 5 bins: right-closed puts it with 0.5, not with 0.7
    probs = np.array([[0.6, 0.4], [0.5, 0.5], [0.7, 0.3]])
    targets = np.array([0, 1, 0])
    # bins: (0.4, 0.6] holds 0.6 (right) and 0.5 (wrong: argmax 0, target 1) -> gap |0.5 - 0.55|;
    # (0.6, 0.8] holds 0.7 (right) -> gap 0.3
    want = 2 / 3 * abs(0.5 - 0.55) + 1 / 3 * 0.3
    assert expected_calibration_error(probs, targets, n_bins=5) == pytest.approx(want)
    # calibrated on average, so per-bin gaps have both signs and the bin count matters
    rng = np.random.default_rng(2)
    p1 = rng.uniform(0.5, 1.0, 400)
    p = np.stack([p1, 1 - p1], 1)
    t = (rng.uniform(size=400) > p1).astype(int)
    assert expected_calibration_error(p, t) == pytest.approx(_sklearn_top_label_ece(p, t, 15))
    assert expected_calibration_error(p, t) != pytest.approx(_sklearn_top_label_ece(p, t, 10))
    assert np.isnan(expected_calibration_error(np.zeros((0, 3)), np.zeros(0, int)))


def test_group_average_keeps_ungrouped_rows_apart_and_handles_no_rows():
    # two rows without a group and with different labels: never merged into one
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [4, 0]], dtype=np.int64)
    out, t, keys = group_average(logits, np.array([0, 1, 0]), [None, None, "g"])
    assert keys == [None, None, "g"] and t.tolist() == [0, 1, 0]
    assert out.dtype == np.float64 and np.allclose(out, [[1, 0], [0, 1], [4, 0]])
    # integer logits of one clip average to a fraction, not a truncated integer
    out, _, _ = group_average(np.array([[1, 0], [2, 0]]), np.array([0, 0]), ["c", "c"])
    assert out.tolist() == [[1.5, 0.0]]
    out, t, keys = group_average(np.zeros((0, 3)), np.zeros(0, int), [])
    assert out.shape == (0, 3) and t.shape == (0,) and t.dtype.kind == "i" and keys == []


@awkward_case
@pytest.mark.filterwarnings("error::sklearn.exceptions.UndefinedMetricWarning")
def test_score_is_quiet_on_classes_never_predicted_and_as_dict_is_complete(awkward):
    """A class never predicted has precision 0 by definition here (zero_division=0), without
    scikit-learn's warning; as_dict carries every field."""
    logits, targets, _ = awkward
    s = score(logits, targets.tolist(), AWK_NAMES)  # a plain list of ints is accepted
    assert s.per_class["b"]["precision"] == 0.0
    d = s.as_dict()
    assert d == {"n": s.n, "war": s.war, "uar": s.uar, "macro_f1": s.macro_f1, "ece": s.ece, "nll": s.nll,
                 "per_class": s.per_class, "confusion": s.confusion}
    assert isinstance(d["per_class"]["a"]["support"], int)


def test_empty_rows_message_is_exact():
    with pytest.raises(ValueError, match="^no rows to score$"):
        score(np.zeros((0, 2)), np.zeros(0, int), ("a", "b"))


def test_float32_inputs_are_computed_in_float64():
    x = np.array([[0.1, 0.2, 0.7]], dtype=np.float32)
    assert softmax(x).dtype == np.float64
    out, _, _ = group_average(x, np.array([2]), ["c"])
    assert out.dtype == np.float64


def test_ece_low_confidence_bins_and_one_row():
    # five classes: a uniform row has confidence 0.2, the top of bin 0 of 5; a 0.3 row is bin 1.
    # Bin 0: right, conf 0.2 -> gap 0.8; bin 1: wrong, conf 0.3 -> gap 0.3
    probs = np.array([[0.2] * 5, [0.3, 0.175, 0.175, 0.175, 0.175]])
    ece = expected_calibration_error(probs, np.array([0, 1]), n_bins=5)
    assert ece == pytest.approx(0.5 * 0.8 + 0.5 * 0.3)
    assert reliability_bins(probs, np.array([0, 1]), n_bins=5)["count"] == [1, 1, 0, 0, 0]
    assert expected_calibration_error(np.array([[0.75, 0.25]]), np.array([1])) == pytest.approx(0.75)


def test_ece_is_the_weighted_gap_over_the_reliability_bins():
    rng = np.random.default_rng(5)
    lg = rng.normal(size=(500, 6)) * rng.uniform(0.2, 4, (500, 1))
    p = softmax(lg)
    p[:5] = np.eye(6)[:5]  # confidence exactly 1.0: the last bin
    t = rng.integers(0, 6, 500)
    t[:3] = np.arange(3)
    for n_bins in (5, 15):
        b = reliability_bins(p, t, n_bins)
        want = sum(c / 500 * abs(a - f) for c, a, f in zip(b["count"], b["accuracy"], b["confidence"]) if c)
        assert expected_calibration_error(p, t, n_bins) == pytest.approx(want)
        assert sum(b["count"]) == 500 and b["count"][-1] >= 5


def test_nll_clips_zero_probabilities_at_1e_12():
    # the true class gets exactly 0 after softmax: the loss is -log(1e-12), not inf or eps-clipped
    s = score(np.array([[1000.0, 0.0], [0.0, 1000.0]]), np.array([1, 1]), ("a", "b"))
    assert s.nll == pytest.approx(-np.log(1e-12) / 2)


def test_confusion_has_a_row_and_column_for_every_model_class():
    s = score(np.array([[2.0, 0, 0], [0, 2.0, 0], [2.0, 0, 0]]), np.array([0, 1, 0]), ("a", "b", "c"))
    assert s.confusion == [[2, 0, 0], [0, 1, 0], [0, 0, 0]]
