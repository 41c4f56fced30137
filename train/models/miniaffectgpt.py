"""`miniaffectgpt`: image features query caption text features (the MiniAffectGPT seed).

The seed (models/attention_fusion.py) scores each image with its own caption and then takes
`softmax(scores, dim=0)`: the softmax runs across the *batch*, so a sample's attention weight,
and its prediction, depend on whatever else shares its batch (and at batch size 1 the weight is
always 1). Here the softmax runs over the keys of one sample: the caption's tokens (B,L,D) with
a padding mask, or its single pooled vector (B,D), where attention reduces to a learned value
projection of the caption. nn.MultiheadAttention does the per-sample scaled dot product.

Seed sizes kept: ResNet-18 image features (512), hidden 512, fusion
cat(image, attended text) -> Linear -> ReLU -> Dropout(0.3) -> classifier.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from train.models.base import FERModel, ModelConfig
from train.models.registry import register_model
from train.models.resnet import ResNetTrunk


@dataclass(frozen=True)
class MiniAffectGPTConfig(ModelConfig):
    text_dim: int = 768          # DistilBERT (the seed); 384 for the offline MiniLM features
    hidden: int = 512
    heads: int = 8
    dropout: float = 0.3
    attn_dropout: float = 0.0
    stem48: bool = True          # see resnet.py; False for 224 px input as in the seed
    pretrained: str | None = None  # ResNet-18 ImageNet weights on disk (see resnet.py)

    def __post_init__(self):
        super().__post_init__()
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")


class MiniAffectGPT(FERModel):
    needs_text = True

    def __init__(self, cfg: MiniAffectGPTConfig):
        super().__init__()
        self.text_dim = cfg.text_dim
        self.image = ResNetTrunk(18, cfg.in_chans, cfg.stem48, cfg.pretrained)
        img_dim = self.image.num_features
        self.query = nn.Linear(img_dim, cfg.hidden)
        self.attn = nn.MultiheadAttention(cfg.hidden, cfg.heads, dropout=cfg.attn_dropout,
                                          kdim=cfg.text_dim, vdim=cfg.text_dim, batch_first=True)
        self.fuse = nn.Sequential(nn.Linear(img_dim + cfg.hidden, cfg.hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(cfg.dropout))
        self.head = nn.Linear(cfg.hidden, cfg.num_classes)
        self.num_features = cfg.hidden
        self.last_attention: torch.Tensor | None = None   # (B, L) of the last forward, for plots

    def _text_tokens(self, text: torch.Tensor, text_mask: torch.Tensor | None):
        if text.dim() == 2:
            text = text.unsqueeze(1)
        if text.dim() != 3 or text.shape[-1] != self.text_dim:
            raise ValueError(f"text features must be (B,{self.text_dim}) or (B,L,{self.text_dim}), "
                             f"got {tuple(text.shape)}; set text_dim to your feature file's width")
        if text_mask is None:
            return text, None
        if text_mask.shape != text.shape[:2]:
            raise ValueError(f"text_mask must be (B,L)={tuple(text.shape[:2])}, "
                             f"got {tuple(text_mask.shape)}")
        valid = text_mask.bool()
        if not valid.any(dim=1).all():
            raise ValueError("a caption has no valid token in text_mask (every position masked); "
                             "an empty caption must keep at least one token (e.g. [CLS])")
        return text, ~valid   # MultiheadAttention masks True positions

    def forward_features(self, x, text=None, text_mask=None):
        img = self.image(x)
        tokens, pad = self._text_tokens(text.to(img.dtype), text_mask)
        q = self.query(img).unsqueeze(1)
        attended, weights = self.attn(q, tokens, tokens, key_padding_mask=pad, need_weights=True)
        self.last_attention = weights.detach().squeeze(1)
        return self.fuse(torch.cat([img, attended.squeeze(1)], dim=1))

    def forward_head(self, feats):
        return self.head(feats)

    def cam_layer(self) -> nn.Module:
        return self.image.layer4


@register_model("miniaffectgpt", MiniAffectGPTConfig)
def miniaffectgpt(cfg: MiniAffectGPTConfig) -> MiniAffectGPT:
    return MiniAffectGPT(cfg)
