"""Classification losses: cross-entropy (label smoothing, class weights), focal, CMAEN's combined.

`build_loss(name, **cfg)` gives an nn.Module `loss(logits, target)`; None options keep defaults.
Cross-entropy is torch's own (it has label smoothing and class weights); focal loss is written
here because torch has only the binary sigmoid form (torchvision.ops.sigmoid_focal_loss), not
the softmax multi-class one FER needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _weight_tensor(class_weights: Sequence[float] | torch.Tensor | None) -> torch.Tensor | None:
    if class_weights is None:
        return None
    w = torch.as_tensor(class_weights, dtype=torch.float32)
    if w.dim() != 1 or (w < 0).any():
        raise ValueError(f"class_weights must be a 1-D list of non-negative numbers, got {w.tolist()}")
    return w


def class_weights_from_counts(counts: Sequence[int], scheme: str = "inverse",
                              beta: float = 0.999) -> list[float]:
    """Per-class weights from training-split counts, normalised to mean 1.

    `inverse`: n / (k * n_c) (scikit-learn's "balanced"); `effective`: (1-beta)/(1-beta^n_c)
    (Cui et al. 2019, class-balanced loss), gentler for very rare classes. A class with no
    sample gets weight 0: it cannot occur as a target anyway.
    """
    c = torch.as_tensor(counts, dtype=torch.float64)
    if scheme == "inverse":
        w = torch.where(c > 0, c.sum() / (len(c) * c.clamp(min=1)), torch.zeros_like(c))
    elif scheme == "effective":
        w = torch.where(c > 0, (1 - beta) / (1 - beta ** c), torch.zeros_like(c))
    else:
        raise ValueError(f"unknown class-weight scheme {scheme!r}; use 'inverse' or 'effective'")
    present = c > 0
    w = w / w[present].mean()
    return [float(x) for x in w]


class CrossEntropy(nn.Module):
    def __init__(self, label_smoothing: float = 0.0, class_weights=None):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", _weight_tensor(class_weights), persistent=False)

    def forward(self, logits, target):
        return F.cross_entropy(logits.float(), target, weight=self.weight,
                               label_smoothing=self.label_smoothing)


def distill_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
               temperature: float = 4.0) -> torch.Tensor:
    """Hinton et al. 2015's soft-target term: T^2 * KL(softmax(t/T) || softmax(s/T)), mean over
    the batch. The T^2 keeps its gradients on the scale of the hard loss's whatever T is."""
    t = float(temperature)
    log_p = F.log_softmax(student_logits.float() / t, dim=-1)
    log_q = F.log_softmax(teacher_logits.float() / t, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * t * t


class FocalLoss(nn.Module):
    """Multi-class focal loss, mean over the batch: alpha * w_y * (1 - p_t)^gamma * CE.

    p_t is the model's probability of the true class (Lin et al. 2017). With label_smoothing the
    CE term is the smoothed one and p_t still comes from the true class, so easy samples are
    down-weighted the same way. With class weights the mean is weighted like torch's CE.
    """

    def __init__(self, gamma: float = 2.0, alpha: float = 1.0, class_weights=None,
                 label_smoothing: float = 0.0):
        super().__init__()
        if gamma < 0:
            raise ValueError(f"focal gamma must be >= 0, got {gamma}")
        self.gamma, self.alpha, self.label_smoothing = gamma, alpha, label_smoothing
        self.register_buffer("weight", _weight_tensor(class_weights), persistent=False)

    def forward(self, logits, target):
        logits = logits.float()
        logp = F.log_softmax(logits, dim=-1)
        ce = F.cross_entropy(logits, target, label_smoothing=self.label_smoothing, reduction="none")
        pt = logp.gather(1, target[:, None]).squeeze(1).exp()
        loss = self.alpha * (1 - pt).pow(self.gamma) * ce
        if self.weight is None:
            return loss.mean()
        w = self.weight[target]
        return (w * loss).sum() / w.sum().clamp(min=1e-12)


class CMAENLoss(nn.Module):
    """The CMAEN seed's loss (train.py compute_combined_loss), every weight configurable:

    CE_ls(final) + focal_weight * focal(final) + emotion_weight * CE(emotion heads)
                 + fusion_weight * CE(fusion head)

    Takes the dict that `cmaen(x, with_aux=True)` returns. The seed's defaults: label smoothing
    0.1, focal alpha 1 and gamma 2, weights 0.3 / 0.2 / 0.2.
    """

    def __init__(self, label_smoothing: float = 0.1, focal_alpha: float = 1.0,
                 focal_gamma: float = 2.0, focal_weight: float = 0.3, emotion_weight: float = 0.2,
                 fusion_weight: float = 0.2, class_weights=None):
        super().__init__()
        self.main = CrossEntropy(label_smoothing, class_weights)
        self.focal = FocalLoss(focal_gamma, focal_alpha, class_weights)
        self.aux = CrossEntropy(0.0, class_weights)
        self.focal_weight, self.emotion_weight = focal_weight, emotion_weight
        self.fusion_weight = fusion_weight

    def forward(self, outputs, target):
        if not isinstance(outputs, dict) or not {"emotion_logits", "fusion_logits"} <= outputs.keys():
            raise ValueError("the cmaen loss needs the model's head outputs: call "
                             "model(x, with_aux=True) and pass that dict")
        final = outputs["logits"]
        return (self.main(final, target) + self.focal_weight * self.focal(final, target)
                + self.emotion_weight * self.aux(outputs["emotion_logits"], target)
                + self.fusion_weight * self.aux(outputs["fusion_logits"], target))


_LOSSES = {"ce": CrossEntropy, "focal": FocalLoss, "cmaen": CMAENLoss}


def list_losses() -> list[str]:
    return sorted(_LOSSES)


def build_loss(name: str, **cfg) -> nn.Module:
    """`build_loss("focal", gamma=2, class_weights=[...])`; None options keep the defaults."""
    try:
        cls = _LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known losses: {', '.join(list_losses())}") from None
    kwargs = {k: v for k, v in cfg.items() if v is not None}
    allowed = set(inspect.signature(cls).parameters)
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"loss {name!r} has no option(s) {unknown}; its options are: "
                        f"{', '.join(sorted(allowed))}")
    return cls(**kwargs)
