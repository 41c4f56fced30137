"""Captions (BLIP) and VQA answers (BLIP-VQA) from the pixels, plus the leakage report.

`caption_images` and `answer_questions` are the model-level functions (images in, text out,
batched); `CaptionStage` wraps them for the resumable runner. Captions are generated from the
image alone: no label, file name or prompt that could carry the class reaches the model. The
stage still reports, per class, how often a caption names an emotion, because a captioner that
says "a smiling woman" already hands the text model part of the answer; users should see how
much.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from features.blip import CAPTION_MODEL, VQA_MODEL, WHAT, Blip, load_blip
from features.device import autocast
from pipeline.stage import oom_retry, set_columns

# The XAI seed asks BLIP-VQA about the mouth, the eyes and the expression; the brief adds brows.
DEFAULT_QUESTIONS = (
    "what is the state of the mouth?",
    "describe the state of the eyes.",
    "what are the eyebrows doing?",
    "what is the facial expression?",
)

# Words (and inflections) that name or strongly imply an emotion, by canonical emotion.
EMOTION_WORDS: dict[str, tuple[str, ...]] = {
    "happy": ("happy", "happily", "happiness", "smile", "smiles", "smiling", "smiled", "laugh", "laughs",
              "laughing", "laughed", "grin", "grins", "grinning", "joy", "joyful", "cheerful", "glad", "delighted"),
    "sad": ("sad", "sadly", "sadness", "unhappy", "cry", "cries", "crying", "cried", "tears", "tearful",
            "sorrow", "sorrowful", "depressed", "upset", "frown", "frowns", "frowning", "gloomy"),
    "angry": ("angry", "angrily", "anger", "mad", "furious", "rage", "annoyed", "irritated", "scowl",
              "scowling", "grumpy", "hostile"),
    "fear": ("fear", "fearful", "fearfully", "afraid", "scared", "frightened", "terrified", "horrified",
             "horror", "scream", "screaming", "panic", "anxious", "worried", "nervous"),
    "surprise": ("surprise", "surprised", "surprising", "shock", "shocked", "astonished", "amazed",
                 "startled", "stunned"),
    "disgust": ("disgust", "disgusted", "disgustedly", "disgusting", "gross", "repulsed", "revolted"),
    "neutral": ("neutral", "expressionless", "blank", "calm", "serious", "emotionless"),
    "contempt": ("contempt", "smirk", "smirks", "smirking", "sneer", "sneering", "disdain"),
}
WORD_TO_EMOTION: dict[str, str] = {w: emo for emo, words in EMOTION_WORDS.items() for w in words}
_WORD = re.compile(r"[a-z]+")


class CaptionError(RuntimeError):
    """The caption stage cannot run as asked; the message says what to do."""


@dataclass(frozen=True)
class CaptionConfig:
    model: str = CAPTION_MODEL
    beams: int = 1
    max_new_tokens: int = 30
    min_new_tokens: int = 0
    vqa: bool = False
    vqa_model: str = VQA_MODEL
    questions: tuple[str, ...] = DEFAULT_QUESTIONS
    vqa_max_new_tokens: int = 10
    dtype: str = "auto"   # autocast: auto (bf16 on CPU and GPU where supported), bf16, fp16, fp32

    def __post_init__(self):
        if self.beams < 1 or self.max_new_tokens < 1 or not 0 <= self.min_new_tokens <= self.max_new_tokens:
            raise CaptionError(f"bad decoding settings: beams={self.beams} (>= 1), max_new_tokens="
                               f"{self.max_new_tokens} (>= 1), min_new_tokens={self.min_new_tokens} (<= max)")
        if self.vqa and not self.questions:
            raise CaptionError("--vqa with no questions: pass --questions 'q1;q2' or a file, or --no-vqa")


def generation_kwargs(beams: int, max_new_tokens: int, min_new_tokens: int = 0) -> dict:
    """Deterministic decoding: greedy (beams=1) or beam search, never sampling."""
    return {"num_beams": beams, "do_sample": False, "max_new_tokens": max_new_tokens,
            "min_new_tokens": min_new_tokens}


# ------------------------------------------------------------------------- model helpers


def _pixels(blip: Blip, images: Sequence[np.ndarray], device: str):
    from features.images import to_rgb

    rgb = [to_rgb(np.array(im, dtype=np.uint8)) for im in images]  # a writable copy: torch warns on read-only
    return blip.processor(images=rgb, return_tensors="pt")["pixel_values"].to(device)


def _decode(blip: Blip, ids) -> list[str]:
    return [t.strip() for t in blip.processor.batch_decode(ids, skip_special_tokens=True)]


# ------------------------------------------------------------------------- model-level functions


def caption_images(blip: Blip, images: Sequence[np.ndarray], cfg: CaptionConfig = CaptionConfig(),
                   device: str = "cpu") -> list[str]:
    """uint8 images (grey or RGB, any size) -> one caption each, from the pixels only."""
    import torch

    pix = _pixels(blip, images, device)
    with torch.inference_mode(), autocast(device, cfg.dtype):
        out = blip.model.generate(pixel_values=pix, **generation_kwargs(cfg.beams, cfg.max_new_tokens,
                                                                        cfg.min_new_tokens))
    return _decode(blip, out)


def answer_questions(blip: Blip, images: Sequence[np.ndarray], questions: Sequence[str],
                     cfg: CaptionConfig = CaptionConfig(), device: str = "cpu") -> list[list[str]]:
    """uint8 images x questions -> answers[i][j] for image i, question j.

    BlipForQuestionAnswering.generate re-encodes the image for every question; the vision
    transformer is most of BLIP's cost, so this runs it once per image and asks every question
    against the same image embeddings (the steps generate() takes, in the same order; a test
    checks the answers equal generate()'s).
    """
    import torch

    m = blip.model
    tok = blip.processor.tokenizer
    pix = _pixels(blip, images, device)
    gen = generation_kwargs(cfg.beams, cfg.vqa_max_new_tokens)
    answers: list[list[str]] = [[] for _ in images]
    with torch.inference_mode(), autocast(device, cfg.dtype):
        image_embeds = m.vision_model(pixel_values=pix)[0]
        image_mask = torch.ones(image_embeds.shape[:-1], dtype=torch.long, device=image_embeds.device)
        for q in questions:
            qi = tok([q] * len(images), padding=True, return_tensors="pt", return_token_type_ids=False).to(device)
            q_embeds = m.text_encoder(input_ids=qi["input_ids"], attention_mask=qi["attention_mask"],
                                      encoder_hidden_states=image_embeds, encoder_attention_mask=image_mask,
                                      return_dict=False)[0]
            q_mask = torch.ones(q_embeds.shape[:-1], dtype=torch.long, device=q_embeds.device)
            bos = torch.full((len(images), 1), m.decoder_start_token_id, device=q_embeds.device)
            out = m.text_decoder.generate(input_ids=bos, eos_token_id=m.config.text_config.sep_token_id,
                                          pad_token_id=m.config.text_config.pad_token_id,
                                          encoder_hidden_states=q_embeds, encoder_attention_mask=q_mask, **gen)
            for i, a in enumerate(_decode(blip, out)):
                answers[i].append(a)
    return answers


# ------------------------------------------------------------------------- leakage report


def emotion_words(text: str | None) -> list[str]:
    """Emotion words in `text` (lower-cased whole words), in order."""
    if not text:
        return []
    return [w for w in _WORD.findall(text.lower()) if w in WORD_TO_EMOTION]


def label_emotions(label: str) -> set[str]:
    """Canonical emotions a class name stands for ('anger' -> angry; 'happily surprised' -> both)."""
    return {WORD_TO_EMOTION[w] for w in _WORD.findall(label.lower()) if w in WORD_TO_EMOTION}


def emotion_word_report(texts: Sequence[str | None], labels: Sequence[str]) -> dict[str, dict]:
    """Per class: rows, rows whose text has an emotion word, the fraction, how many name the row's
    own class, and the most common emotion words. Null texts count as rows without one."""
    if len(texts) != len(labels):
        raise ValueError(f"{len(texts)} texts for {len(labels)} labels")
    per: dict[str, dict] = {}
    for text, label in zip(texts, labels):
        r = per.setdefault(label, {"n": 0, "with_emotion_word": 0, "names_own_class": 0, "_words": Counter()})
        words = emotion_words(text)
        r["n"] += 1
        if words:
            r["with_emotion_word"] += 1
            r["_words"].update(words)
            if {WORD_TO_EMOTION[w] for w in words} & label_emotions(label):
                r["names_own_class"] += 1
    out = {}
    for label in sorted(per):
        r = per[label]
        out[label] = {"n": r["n"], "with_emotion_word": r["with_emotion_word"],
                      "fraction": round(r["with_emotion_word"] / r["n"], 4),
                      "names_own_class": r["names_own_class"],
                      "top_words": dict(r["_words"].most_common(5))}
    return out


def format_report(report: dict[str, dict]) -> str:
    lines = [f"{'class':<14} {'rows':>6} {'emotion word':>13} {'own class':>10}  top words"]
    for label, r in report.items():
        words = ", ".join(f"{w} {c}" for w, c in r["top_words"].items())
        lines.append(f"{label:<14} {r['n']:>6} {100 * r['fraction']:>12.1f}% {r['names_own_class']:>10}  {words}")
    return "\n".join(lines)


# ------------------------------------------------------------------------- the stage


@dataclass
class CaptionStage:
    """Fills the `caption` group (and `vqa` with cfg.vqa) of every row; picklable until setup()."""

    cfg: CaptionConfig = field(default_factory=CaptionConfig)
    device: str = "cpu"
    name: str = "caption"
    _blip: Any = field(default=None, repr=False)
    _vqa: Any = field(default=None, repr=False)
    _sha: dict = field(default_factory=dict, repr=False)

    @property
    def groups(self) -> tuple[str, ...]:
        return ("caption", "vqa") if self.cfg.vqa else ("caption",)

    def _weights_sha(self, which: str) -> str:
        # Cached: the runner asks for settings once per batch, and hashing ~1 GB of weights is not free.
        if which not in self._sha:
            from features.encoders import weights_sha256
            from features.hub import resolve

            spec = self.cfg.model if which == "caption" else self.cfg.vqa_model
            self._sha[which] = weights_sha256(resolve(spec, WHAT[which], files=("config.json",)))
        return self._sha[which]

    def caption_settings(self) -> dict:
        c = self.cfg
        return {"model": c.model, "sha256": self._weights_sha("caption"), "beams": c.beams,
                "max_new_tokens": c.max_new_tokens, "min_new_tokens": c.min_new_tokens, "dtype": c.dtype}

    def vqa_settings(self) -> dict:
        c = self.cfg
        return {"model": c.vqa_model, "sha256": self._weights_sha("vqa"), "beams": c.beams,
                "max_new_tokens": c.vqa_max_new_tokens, "dtype": c.dtype, "questions": list(c.questions)}

    def settings(self) -> dict:
        s = {"caption": self.caption_settings()}
        if self.cfg.vqa:
            s["vqa"] = self.vqa_settings()
        return s

    def setup(self) -> None:
        self._blip = load_blip(self.cfg.model, "caption", self.device)
        if self.cfg.vqa:
            self._vqa = load_blip(self.cfg.vqa_model, "vqa", self.device)

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]:
        from features.images import BadImage, decode

        images, keep, rejects = [], [], []
        for k, (sid, src, data) in enumerate(zip(batch.column("sample_id").to_pylist(),
                                                 batch.column("source_path").to_pylist(),
                                                 batch.column("image").to_pylist())):
            try:
                images.append(decode(data)[0])
                keep.append(k)
            except BadImage as e:
                rejects.append({"sample_id": sid, "source_path": src, "reason": f"caption: {e}"})
        batch = batch.take(pa.array(keep, pa.int64()))
        caps = oom_retry(lambda ims: caption_images(self._blip, ims, self.cfg, self.device), images) if images else []
        cap_meta = json.dumps(self.caption_settings(), sort_keys=True)
        cols = {"caption": pa.array(caps, pa.string()),
                "caption_model": pa.array([cap_meta] * len(caps), pa.string())}
        if self.cfg.vqa:
            ans = oom_retry(lambda ims: answer_questions(self._vqa, ims, self.cfg.questions, self.cfg, self.device),
                            images) if images else []
            vqa_meta = json.dumps(self.vqa_settings(), sort_keys=True)
            cols |= {"vqa_questions": pa.array([list(self.cfg.questions)] * len(ans), pa.list_(pa.string())),
                     "vqa_answers": pa.array(ans, pa.list_(pa.string())),
                     "vqa_model": pa.array([vqa_meta] * len(ans), pa.string())}
        return set_columns(batch, cols), rejects

    def summarize(self, table: pa.Table) -> dict:
        return summarize_table(table, self.cfg.questions if self.cfg.vqa else ())

    def __getstate__(self):  # ship the recipe to a worker, never the loaded models
        d = dict(self.__dict__)
        d["_blip"] = d["_vqa"] = None
        return d


def summarize_table(table: pa.Table, questions: Sequence[str] = ()) -> dict:
    """The leakage report over a captioned manifest: captions, and each VQA question's answers."""
    labels = table.column("label").to_pylist()
    out: dict[str, Any] = {"emotion_words": {"caption": emotion_word_report(table.column("caption").to_pylist(),
                                                                             labels)}}
    if questions and "vqa_answers" in table.column_names:
        answers = table.column("vqa_answers").to_pylist()
        for j, q in enumerate(questions):
            texts = [a[j] if a and j < len(a) else None for a in answers]
            out["emotion_words"][f"vqa: {q}"] = emotion_word_report(texts, labels)
    return out
