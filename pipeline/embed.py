"""`embed`: frozen-encoder features of a manifest's captions or images, as a feature file.

The output is not a manifest but a feature file keyed by `sample_id` (see features.encoders):
`train run` and `train eval` look its vectors up by the manifest's sample_ids, in the
manifest's order. Text encoders read the `caption` column
that `pipeline caption` fills; image encoders read the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from features.encoders import (
    TEXT_ENCODERS,
    EncoderSpec,
    encoder_kind,
    encoder_settings,
    features_schema,
    features_table,
    write_features,
)
from features.manifest import META_PRODUCER, ManifestError, open_manifest
from pipeline.stage import StageError, oom_retry

DTYPES = ("float16", "float32")


@dataclass(frozen=True)
class EmbedConfig:
    encoder: str = "distilbert"
    weights: str | None = None   # path or hub id; None = the encoder's default
    tokens: bool = False         # also keep the token sequence (text encoders; for attention models)
    dtype: str = "float16"
    max_length: int = 64

    def __post_init__(self):
        encoder_kind(self.encoder)  # unknown encoder: KeyError listing the known ones
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype {self.dtype!r}: expected one of {', '.join(DTYPES)}")
        if self.tokens and self.encoder not in TEXT_ENCODERS:
            raise ValueError(f"--tokens needs a text encoder ({', '.join(TEXT_ENCODERS)}), not {self.encoder!r}")

    @property
    def kind(self) -> str:
        return encoder_kind(self.encoder)


def check_input(in_path: str | Path, cfg: EmbedConfig) -> None:
    """Fail before loading any model when a text encoder meets a manifest without captions."""
    schema, _ = open_manifest(in_path)
    if cfg.kind == "text" and "caption" not in schema.names:
        raise ManifestError(f"{in_path} has no caption column, and text encoder {cfg.encoder!r} embeds "
                            f"captions; run `pipeline caption --in {in_path} --out CAPTIONED.parquet` first "
                            "and embed that, or pick an image encoder (--encoder clip|resnet18)")


@dataclass
class EmbedStage:
    """Manifest rows -> feature rows (sample_id, vector[, tokens, token_mask]); picklable until setup()."""

    cfg: EmbedConfig = field(default_factory=EmbedConfig)
    device: str = "cpu"
    source: str = ""             # the input manifest, recorded in the feature file's metadata
    name: str = "embed"
    groups: tuple[str, ...] = ()
    _encoder: Any = field(default=None, repr=False)
    _settings: dict = field(default_factory=dict, repr=False)

    def settings(self) -> dict:
        # Cached: hashing the weights once is enough, and the runner asks per batch.
        if not self._settings:
            c = self.cfg
            enc = encoder_settings(EncoderSpec(c.encoder, c.weights, max_length=c.max_length))
            self._settings.update(enc | {"tokens": c.tokens, "dtype": c.dtype})
        return dict(self._settings)

    def setup(self) -> None:
        from features.encoders import load_image_encoder, load_text_encoder

        c = self.cfg
        spec = EncoderSpec(c.encoder, c.weights, device=self.device, max_length=c.max_length)
        self._encoder = load_text_encoder(spec) if c.kind == "text" else load_image_encoder(spec)

    def process(self, batch: pa.Table) -> tuple[pa.Table, list[dict]]:
        ids = batch.column("sample_id").to_pylist()
        srcs = batch.column("source_path").to_pylist()
        if self.cfg.kind == "text":
            inputs, keep, rejects = self._captions(batch, ids, srcs)
        else:
            inputs, keep, rejects = self._images(batch, ids, srcs)
        if not inputs:
            return features_schema(self.cfg.dtype, self.cfg.tokens).empty_table(), rejects
        # One-element lists: oom_retry joins the halves of a split batch with `+`, which must
        # concatenate (on bare numpy arrays it would add them elementwise).
        parts = oom_retry(lambda xs: [self._encode(xs)], inputs)
        return features_table([ids[k] for k in keep], _concat(parts), self.cfg.dtype), rejects

    def _encode(self, xs):
        from features.encoders import Encoded

        if self.cfg.kind == "text":
            return self._encoder.encode(xs, tokens=self.cfg.tokens)
        return Encoded(self._encoder.encode(xs))

    def _captions(self, batch: pa.Table, ids, srcs):
        if "caption" not in batch.column_names:
            raise StageError("the manifest has no caption column; run `pipeline caption` first")
        texts, keep, rejects = [], [], []
        for k, cap in enumerate(batch.column("caption").to_pylist()):
            # None = the caption stage never ran on this row (e.g. a SMOTE row added later): reject.
            # A blank caption is the captioner's real answer ("nothing to say"): embed it as
            # text, so a fusion model still gets every row and learns what "no text" means.
            if cap is None:
                rejects.append({"sample_id": ids[k], "source_path": srcs[k],
                                "reason": "embed: no caption (run `pipeline caption` on this row)"})
            else:
                texts.append(cap.strip())
                keep.append(k)
        return texts, keep, rejects

    def _images(self, batch: pa.Table, ids, srcs):
        from features.images import BadImage, decode

        images, keep, rejects = [], [], []
        for k, data in enumerate(batch.column("image").to_pylist()):
            try:
                images.append(decode(data)[0])
                keep.append(k)
            except BadImage as e:
                rejects.append({"sample_id": ids[k], "source_path": srcs[k], "reason": f"embed: {e}"})
        return images, keep, rejects

    def write_output(self, table: pa.Table, path: Path, producer: dict) -> None:
        """Feature-file writer for the runner: provenance in the file metadata."""
        import json

        if "vector" not in table.column_names:  # an empty input manifest: an empty feature file
            table = features_schema(self.cfg.dtype, self.cfg.tokens).empty_table()
        dim = len(table.column("vector")[0]) if table.num_rows else None
        md = {META_PRODUCER: json.dumps(producer, sort_keys=True, default=str).encode()}
        meta = self.settings() | {"dim": dim, "kind": self.cfg.kind, "rows": table.num_rows,
                                  "source_manifest": self.source or producer.get("input")}
        write_features(table.replace_schema_metadata(md), path, meta)

    def __getstate__(self):  # ship the recipe to a worker, never the loaded model
        d = dict(self.__dict__)
        d["_encoder"] = None
        return d


def _concat(parts: list) -> Any:
    import numpy as np

    from features.encoders import Encoded

    if len(parts) == 1:
        return parts[0]
    return Encoded(np.concatenate([p.vectors for p in parts]),
                   None if parts[0].tokens is None else np.concatenate([p.tokens for p in parts]),
                   None if parts[0].mask is None else np.concatenate([p.mask for p in parts]))


def embed(in_path: str | Path, out_path: str | Path, cfg: EmbedConfig, run_cfg=None, progress=None):
    """Library entry point: check the input, run the stage through the resumable runner."""
    from pipeline.parts import RunConfig
    from pipeline.runner import run_stage

    check_input(in_path, cfg)
    stage = EmbedStage(cfg, source=str(in_path))
    return run_stage(stage, in_path, out_path, run_cfg or RunConfig(), progress=progress)
