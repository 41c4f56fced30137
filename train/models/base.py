"""The base class every registered model derives from, and the fields every config has."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ModelConfig:
    num_classes: int = 7
    in_chans: int = 1
    input_size: int = 48

    def __post_init__(self):
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {self.num_classes}")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans must be 1 (grey) or 3 (RGB), got {self.in_chans}")
        if self.input_size < 8:
            raise ValueError(f"input_size must be >= 8 pixels, got {self.input_size}")


class FERModel(nn.Module):
    """forward(x) == forward_head(forward_features(x)); see registry.py for the trainer contract."""

    input_kind: str = "image"
    needs_text: bool = False
    channels_last_ok: bool = True
    config: ModelConfig
    model_name: str

    def forward_features(self, x, text=None, text_mask=None) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x, text=None, text_mask=None, *, with_aux: bool = False):
        self._check_input(x, text)
        logits = self.forward_head(self.forward_features(x, text, text_mask))
        return {"logits": logits} if with_aux else logits

    def cam_layer(self) -> nn.Module | None:
        return None

    def add_logit_bias(self, bias: torch.Tensor) -> None:
        """Shift every output logit by `bias` (K,), in the weights themselves, so the saved
        checkpoint carries it and every consumer (eval, predict, export) sees the same model.
        The default adds it to `self.head`'s bias, the last Linear of most models here."""
        head = getattr(self, "head", None)
        if not isinstance(head, nn.Linear) or head.bias is None:
            raise NotImplementedError(f"{type(self).__name__} has no final nn.Linear `head` with a "
                                      "bias; override add_logit_bias")
        with torch.no_grad():
            head.bias.add_(torch.as_tensor(bias, dtype=head.bias.dtype, device=head.bias.device))

    def param_groups(self, epoch: int, base_lr: float) -> list[dict] | None:
        """Optimizer groups, or None for "all parameters at base_lr". The list has the same
        groups in the same order for every epoch, so an optimizer built once (and its resumed
        state) stays valid; parameters frozen in an epoch get no gradient and the optimizer
        skips them. Models with a freezing schedule apply it here too (as set_epoch does)."""
        return None

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer at the start of every epoch (0-based): freezing schedules."""

    def loss(self, outputs, target: torch.Tensor) -> torch.Tensor | None:
        return None

    def _check_input(self, x, text) -> None:
        want = {"image": 4, "clip": 5, "feature": 2}[self.input_kind]
        if x.dim() != want:
            shape = {"image": "(B,C,H,W)", "clip": "(B,T,C,H,W)", "feature": "(B,D)"}
            raise ValueError(f"{type(self).__name__} takes {self.input_kind} input "
                             f"{shape[self.input_kind]}, got a tensor of shape {tuple(x.shape)}")
        if self.needs_text and text is None:
            raise ValueError(f"{type(self).__name__} fuses caption text: pass text features "
                             "(B,D) or tokens (B,L,D) with text_mask (B,L)")


def logits_of(outputs) -> torch.Tensor:
    """Logits from either a plain forward's tensor or a with_aux dict."""
    return outputs["logits"] if isinstance(outputs, dict) else outputs


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Inference copy-in-place: every Conv2d directly followed by a BatchNorm2d inside an
    nn.Sequential becomes one Conv2d with the BN folded in (torch's own `fuse_conv_bn_eval`), the
    BN an Identity. Same outputs up to float rounding, fewer passes over memory; the peers'
    ports fold theirs too, so latency is compared like for like. The model must be in eval()
    mode; call this only on a model that will not be trained again."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fold_batchnorm needs model.eval(): folding uses the BN running statistics")
    for seq in [m for m in model.modules() if isinstance(m, nn.Sequential)]:
        kids = list(seq)
        for i in range(len(kids) - 1):
            conv, bn = kids[i], kids[i + 1]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and bn.track_running_stats
                    and conv.out_channels == bn.num_features):
                seq[i] = fuse_conv_bn_eval(conv, bn)
                seq[i + 1] = nn.Identity()
    return model
