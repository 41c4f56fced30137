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
