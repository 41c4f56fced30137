"""train/losses.py: focal, cross-entropy options, CMAEN's combined loss, class weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from train.losses import CMAENLoss, FocalLoss, build_loss, class_weights_from_counts, list_losses


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 7, generator=g) * 3, torch.randint(7, (16,), generator=g)


def test_focal_with_gamma_zero_is_cross_entropy(batch):
    logits, y = batch
    torch.testing.assert_close(FocalLoss(gamma=0)(logits, y), F.cross_entropy(logits, y))
    w = [1, 2, 3, 1, 1, 0.5, 4]
    torch.testing.assert_close(FocalLoss(gamma=0, class_weights=w)(logits, y),
                               F.cross_entropy(logits, y, weight=torch.tensor(w, dtype=torch.float)))


def test_focal_down_weights_easy_samples_more_than_hard_ones():
    y = torch.tensor([0])
    easy, hard = torch.tensor([[4.0, 0, 0]]), torch.tensor([[0.5, 0, 0]])
    ratio = lambda x: (FocalLoss(gamma=2)(x, y) / F.cross_entropy(x, y)).item()  # noqa: E731
    p_easy = torch.softmax(easy, 1)[0, 0].item()
    assert ratio(easy) == pytest.approx((1 - p_easy) ** 2, rel=1e-5)
    assert ratio(easy) < ratio(hard) < 1


def test_focal_alpha_scales_and_gamma_must_be_non_negative(batch):
    logits, y = batch
    torch.testing.assert_close(FocalLoss(alpha=0.25)(logits, y), 0.25 * FocalLoss()(logits, y))
    with pytest.raises(ValueError, match="gamma"):
        FocalLoss(gamma=-1)


def test_ce_matches_torch_with_smoothing_and_weights(batch):
    logits, y = batch
    w = [1, 2, 3, 1, 1, 0.5, 4]
    got = build_loss("ce", label_smoothing=0.1, class_weights=w)(logits, y)
    want = F.cross_entropy(logits, y, label_smoothing=0.1, weight=torch.tensor(w, dtype=torch.float))
    torch.testing.assert_close(got, want)


def test_cmaen_loss_is_the_seeds_weighted_sum(batch):
    logits, y = batch
    emo, fus = logits.flip(1), logits * 0.5
    out = {"logits": logits, "emotion_logits": emo, "fusion_logits": fus}
    got = CMAENLoss(focal_weight=0.3, emotion_weight=0.2, fusion_weight=0.2)(out, y)
    ce_p = F.cross_entropy(logits, y, reduction="none")
    focal = ((1 - torch.exp(-ce_p)) ** 2 * ce_p).mean()
    want = (F.cross_entropy(logits, y, label_smoothing=0.1) + 0.3 * focal
            + 0.2 * F.cross_entropy(emo, y) + 0.2 * F.cross_entropy(fus, y))
    torch.testing.assert_close(got, want)
    only_main = CMAENLoss(label_smoothing=0, focal_weight=0, emotion_weight=0, fusion_weight=0)(out, y)
    torch.testing.assert_close(only_main, F.cross_entropy(logits, y))
    with pytest.raises(ValueError, match="with_aux=True"):
        CMAENLoss()(logits, y)


def test_loss_is_float32_under_bf16_logits(batch):
    logits, y = batch
    assert build_loss("focal")(logits.bfloat16(), y).dtype == torch.float32


def test_build_loss_errors_and_none_defaults():
    assert list_losses() == ["ce", "cmaen", "focal"]
    assert build_loss("focal", gamma=None).gamma == 2.0
    with pytest.raises(ValueError, match="unknown loss 'dice'.*ce, cmaen, focal"):
        build_loss("dice")
    with pytest.raises(TypeError, match="no option.*'gama'"):
        build_loss("focal", gama=1)
    with pytest.raises(ValueError, match="non-negative"):
        build_loss("ce", class_weights=[1, -1])


def test_class_weights_from_counts():
    w = class_weights_from_counts([100, 10, 0, 50])
    assert w[2] == 0
    assert w[1] > w[3] > w[0]
    assert sum(w[i] for i in (0, 1, 3)) / 3 == pytest.approx(1.0)
    assert w[1] / w[0] == pytest.approx(10.0)
    eff = class_weights_from_counts([100, 10, 50], scheme="effective")
    assert eff[1] / eff[0] < 10 and eff[1] > eff[2] > eff[0]
    with pytest.raises(ValueError, match="scheme"):
        class_weights_from_counts([1, 2], scheme="sqrt")


def test_distill_kl_by_hand(batch):
    """T^2 * KL(teacher || student) at temperature T, mean over the batch (Hinton et al. 2015)."""
    from train.losses import distill_kl

    s, _ = batch
    t = s.flip(0) * 0.7 + 1.0
    for temp in (1.0, 4.0):
        p = torch.softmax(s / temp, 1)
        q = torch.softmax(t / temp, 1)
        want = temp ** 2 * (q * (q.log() - p.log())).sum(1).mean()
        torch.testing.assert_close(distill_kl(s, t, temp), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(distill_kl(s, t), distill_kl(s, t, 4.0))  # the default T is 4
    assert distill_kl(s.bfloat16(), t.bfloat16()).dtype == torch.float32
    assert distill_kl(s, s).item() == pytest.approx(0.0, abs=1e-6)


def test_focal_with_class_weights_is_a_weighted_mean_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, -1.0]])
    y = torch.tensor([0, 1, 2])
    w = torch.tensor([1.0, 3.0, 0.5])
    ce = F.cross_entropy(logits, y, reduction="none")
    per = (1 - torch.exp(-ce)) ** 2 * ce
    want = (w[y] * per).sum() / w[y].sum()
    torch.testing.assert_close(FocalLoss(class_weights=[1, 3, 0.5])(logits, y), want)
    # label smoothing changes the CE term, not p_t
    ce_s = F.cross_entropy(logits, y, reduction="none", label_smoothing=0.2)
    torch.testing.assert_close(FocalLoss(label_smoothing=0.2)(logits, y), ((1 - torch.exp(-ce)) ** 2 * ce_s).mean())
    # all-zero weights do not divide by zero
    assert torch.isfinite(FocalLoss(class_weights=[0, 0, 0])(logits, y))
    d = FocalLoss()
    assert (d.gamma, d.alpha, d.label_smoothing, d.weight) == (2.0, 1.0, 0.0, None)
    assert FocalLoss(gamma=0).gamma == 0  # zero is allowed, only negative is refused


def test_class_weights_are_float32_and_checked():
    from train.losses import CrossEntropy

    ce = CrossEntropy(class_weights=[1, 2, 0])  # integers, and a zero weight, are accepted
    assert ce.weight.dtype == torch.float32 and ce.weight.tolist() == [1.0, 2.0, 0.0]
    assert CrossEntropy().weight is None and CrossEntropy().label_smoothing == 0.0
    for bad, shown in (([1, -1], "[1.0, -1.0]"), ([[1, 2]], "[[1.0, 2.0]]")):
        with pytest.raises(ValueError, match=r"^class_weights must be a 1-D list of non-negative numbers, got "
                                             + shown.replace("[", r"\[").replace("]", r"\]") + "$"):
            CrossEntropy(class_weights=bad)


def test_class_weight_schemes_by_hand():
    counts = [100, 10, 0, 50]
    inv = [160 / 400, 160 / 40, 0, 160 / 200]  # n / (k * n_c) with n = 160, k = 4
    mean = sum(inv) / 3
    assert class_weights_from_counts(counts) == pytest.approx([v / mean for v in inv])
    beta = 0.999
    eff = [(1 - beta) / (1 - beta ** c) for c in (100, 10, 50)]
    m = sum(eff) / 3
    assert class_weights_from_counts([100, 10, 50], scheme="effective") == pytest.approx([v / m for v in eff])
    b = 0.9
    eff9 = [(1 - b) / (1 - b ** c) for c in (100, 10, 50)]
    assert class_weights_from_counts([100, 10, 50], "effective", beta=b) == pytest.approx([v / (sum(eff9) / 3) for v in eff9])
    assert class_weights_from_counts([0, 5, 5], "effective") == pytest.approx([0.0, 1.0, 1.0])
    assert all(isinstance(v, float) for v in class_weights_from_counts([1, 2]))
    with pytest.raises(ValueError, match=r"^unknown class-weight scheme 'sqrt'; use 'inverse' or 'effective'$"):
        class_weights_from_counts([1, 2], scheme="sqrt")


def test_loss_messages_and_defaults_exactly():
    from train.losses import CrossEntropy

    with pytest.raises(ValueError, match=r"^unknown loss 'dice'; known losses: ce, cmaen, focal$"):
        build_loss("dice")
    with pytest.raises(TypeError, match=r"^loss 'focal' has no option\(s\) \['gama'\]; its options are: "
                                        r"alpha, class_weights, gamma, label_smoothing$"):
        build_loss("focal", gama=1, gamma=None)
    with pytest.raises(ValueError, match=r"^focal gamma must be >= 0, got -1$"):
        FocalLoss(gamma=-1)
    with pytest.raises(ValueError, match=r"^the cmaen loss needs the model's head outputs: call "
                                         r"model\(x, with_aux=True\) and pass that dict$"):
        CMAENLoss()({"logits": torch.zeros(1, 3), "emotion_logits": torch.zeros(1, 3)}, torch.tensor([0]))
    c = CMAENLoss()
    assert (c.main.label_smoothing, c.focal.alpha, c.focal.gamma, c.focal_weight, c.emotion_weight,
            c.fusion_weight) == (0.1, 1.0, 2.0, 0.3, 0.2, 0.2)
    assert c.aux.label_smoothing == 0.0 and c.focal.label_smoothing == 0.0
    w = CMAENLoss(class_weights=[1, 2, 3])
    assert all(m.weight.tolist() == [1.0, 2.0, 3.0] for m in (w.main, w.focal, w.aux))
    assert isinstance(build_loss("ce"), CrossEntropy)
