"""Caption text for models that fuse it (miniaffectgpt) at predict time.

The MiniAffectGPT seed predicts one image with a caption (its predict.py takes `text` beside the
image and embeds it with the same DistilBERT as in training). Here a face's caption comes from
the user (`--caption TEXT`, the same text for every face) or, when none is given, from BLIP run on
the face crop (local weights only), as `pipeline caption` made the training captions. The caption
is then embedded with the text encoder that made the run's training features: the one named in
that feature file's metadata (`features.encoders.features_meta`), or `text_encoder` when given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from features.blip import CAPTION_MODEL


class CaptionTextError(ValueError):
    """No caption text for a caption-fusing model; train.api turns it into PredictError."""


class CaptionText:
    """Face crops -> captions -> the text tensors the model was trained on.

    `source` says where the captions come from (shown to the user). Raises CaptionTextError when
    neither a caption nor BLIP weights are available, or the text encoder cannot be found.
    """

    def __init__(self, sidecar: dict, caption: str | None = None, caption_model: str = CAPTION_MODEL,
                 text_encoder: str | None = None, device: str = "cpu"):
        from features.encoders import EncoderSpec, FeatureFileError, features_meta, load_text_encoder
        from features.hub import WeightsNotFound

        feats = sidecar.get("features") or {}
        path = feats.get("text")
        meta: dict[str, Any] = dict(feats.get("text_meta") or {})  # recorded at training time
        if text_encoder is None and not meta:  # a run from before the record: read the file itself
            try:
                meta = features_meta(path) if path else {}
            except FeatureFileError as e:
                raise CaptionTextError(f"this model fuses caption text features; its training feature file "
                                       f"cannot tell which text encoder made them ({e}); pass "
                                       "--text-encoder distilbert|minilm (text_encoder= in the API)") from None
        if text_encoder is None and not meta.get("encoder"):
            raise CaptionTextError("this model fuses caption text features and its sidecar names no feature "
                                   "file; pass --text-encoder distilbert|minilm (text_encoder= in the API; the "
                                   "encoder `pipeline embed` used for its training features)")
        name = text_encoder or meta["encoder"]
        weights = None if text_encoder else meta.get("weights")
        self.tokens = bool(meta.get("tokens"))
        try:
            self.encoder = load_text_encoder(EncoderSpec(name, weights, device, int(meta.get("max_length", 64))))
        except (WeightsNotFound, KeyError) as e:
            raise CaptionTextError(f"this model fuses caption text features; text encoder {name}: {e}") from None
        self.caption = caption
        self.device = device
        self._blip = None
        if caption is not None:
            self.source = f"caption given with --caption for every face: {caption!r}"
        else:
            from features.hub import resolve

            try:
                self._blip_path = resolve(caption_model, "BLIP caption model")
            except WeightsNotFound as e:
                raise CaptionTextError(f"this model fuses caption text features: pass --caption TEXT, or "
                                       f"put BLIP's weights where they can be found ({e})") from None
            self.source = f"each face captioned by BLIP ({caption_model})"
        self.source += f"; embedded with {name}"

    def captions(self, crops: Sequence[np.ndarray]) -> list[str]:
        if self.caption is not None:
            return [self.caption] * len(crops)
        import torch
        from PIL import Image

        from features.images import to_rgb

        if self._blip is None:  # the one BLIP loader of both apps (features/blip.py)
            from features.blip import load_blip

            blip = load_blip(str(self._blip_path), "caption", self.device)
            self._blip = (blip.processor, blip.model)
        proc, model = self._blip
        out = []
        with torch.inference_mode():
            for crop in crops:
                inp = proc(images=Image.fromarray(to_rgb(crop)), return_tensors="pt").to(self.device)
                ids = model.generate(**inp, max_new_tokens=30)
                out.append(proc.decode(ids[0], skip_special_tokens=True).strip())
        return out

    def features(self, captions: Sequence[str]):
        """Captions -> (text (B,D) or (B,L,D) float32 tensor, mask (B,L) bool or None)."""
        import torch

        enc = self.encoder.encode(list(captions), tokens=self.tokens)
        if self.tokens:
            return torch.from_numpy(enc.tokens), torch.from_numpy(enc.mask.astype(bool))
        return torch.from_numpy(enc.vectors), None
