"""BLIP, loaded once for both apps: `pipeline caption` and `train predict --describe`.

BLIP (Li et al., "BLIP: Bootstrapping Language-Image Pre-training", ICML 2022) through
transformers' BlipForConditionalGeneration (captions) and BlipForQuestionAnswering (VQA).
Weights come from a local folder or the HF cache through features.hub, which never downloads.
The model ids below are the defaults of every command that runs BLIP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from features.hub import WeightsNotFound, resolve

CAPTION_MODEL = "Salesforce/blip-image-captioning-base"
VQA_MODEL = "Salesforce/blip-vqa-base"
WHAT = {"caption": "BLIP captioning model", "vqa": "BLIP-VQA model"}


@dataclass
class Blip:
    model: Any       # BlipForConditionalGeneration or BlipForQuestionAnswering, in eval mode
    processor: Any   # BlipProcessor (image processor + tokenizer)
    path: Any        # the local folder the weights came from
    spec: str        # what was asked for: an HF id or a folder


def load_blip(spec: str, task: str = "caption", device: str = "cpu", what: str | None = None) -> Blip:
    """A BLIP captioner (`task="caption"`) or BLIP-VQA model (`task="vqa"`) from an HF id in the
    cache or a save_pretrained folder, on `device`, in eval mode.

    `what` names the model in errors (default: WHAT[task]). Raises WeightsNotFound when the
    weights or the processor files are not there, features.weights.WeightsError for a bad
    weights file; both messages name the path and what to do.
    """
    from features.encoders import quiet_transformers

    what = what or WHAT[task]
    path = resolve(spec, what, files=("config.json",))
    if not any((path / f).exists() for f in ("preprocessor_config.json", "processor_config.json")):
        # hub snapshots carry preprocessor_config.json; transformers 5's save_pretrained, processor_config.json
        raise WeightsNotFound(f"{what}: {path} has the model but no processor (preprocessor_config.json); "
                              "save the BlipProcessor into the same folder")
    quiet_transformers()
    from transformers import BlipForConditionalGeneration, BlipForQuestionAnswering, BlipProcessor

    cls = BlipForConditionalGeneration if task == "caption" else BlipForQuestionAnswering
    processor = BlipProcessor.from_pretrained(path, local_files_only=True)
    from features.weights import from_pretrained  # a bad weights file: one line naming it

    model = from_pretrained(cls, path, what).to(device).eval()
    return Blip(model, processor, path, spec)
