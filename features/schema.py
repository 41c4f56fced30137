"""The manifest contract: one explicit, versioned pyarrow schema for a manifest row.

A manifest is one self-contained Parquet file (the encoded image bytes travel inside it).
The core columns are always present; later stages add whole *column groups* (enhancement
provenance, captions, VQA answers, face boxes, FER+ votes), each nullable and documented
here, so a reader can tell what a file holds by the groups it carries.

The schema version lives in the Parquet key-value metadata (``affectlab.schema_version``).
Bump it whenever a core column changes meaning or type; readers refuse other versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = "1"
META_VERSION = b"affectlab.schema_version"
META_LABEL_SET = b"affectlab.label_set"  # JSON: {"name": ..., "names": [...]}
META_PRODUCER = b"affectlab.producer"  # JSON: which command/stage wrote the file, with settings
META_FEATURES = b"affectlab.features"  # JSON: encoder, weights, weights_sha256, dim, dtype, source...

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    nullable: bool
    doc: str


CORE: tuple[Column, ...] = (
    Column("sample_id", pa.string(), False,
           "Stable id: '<dataset>-' + 16 hex of sha1(dataset, source_path, frame). Same input, same id."),
    Column("dataset", pa.string(), False, "Dataset key, e.g. fer2013, ferplus, ckplus, rafdb, dfew, synth."),
    Column("split", pa.string(), False, "train / val / test. val is always carved out of the training split."),
    Column("orig_split", pa.string(), True,
           "The dataset's own split name: FER2013 Training/PublicTest/PrivateTest, DFEW 'set_3:train', ..."),
    Column("source_path", pa.string(), False, "Where the image came from (path, or 'file.csv#row')."),
    Column("label", pa.string(), False, "Class name in the label set below."),
    Column("label_id", pa.int16(), False, "Index of `label` in the label set's names."),
    Column("label_set", pa.string(), False, "Name of the label set (see features.labels)."),
    Column("image", pa.binary(), False, "Encoded image bytes (JPEG/PNG), the original bytes when possible."),
    Column("image_format", pa.string(), False, "jpeg / png / ... (lower case PIL format)."),
    Column("width", pa.int32(), False, "Decoded width in pixels."),
    Column("height", pa.int32(), False, "Decoded height in pixels."),
    Column("channels", pa.int8(), False, "1 (grey) or 3 (RGB) after decoding."),
    Column("pixel_hash", pa.string(), False, "SHA-1 of the decoded uint8 pixel array (duplicates, leaks, caches)."),
    Column("subject", pa.string(), True, "Person id where known (CK+ S005): never split across train/val."),
    Column("sequence", pa.string(), True, "Sequence id where known (CK+ S005_001)."),
    Column("clip_id", pa.string(), True, "Video clip id (DFEW): all frames of a clip share a split."),
    Column("frame_index", pa.int32(), True, "Frame number inside the clip."),
    Column("synthetic", pa.bool_(), False, "True for rows a stage generated (SMOTE, augmentation)."),
    Column("parent_ids", pa.list_(pa.string()), True, "sample_ids a synthetic row was made from."),
    Column("leak", pa.bool_(), False,
           "True for a test row whose pixels also occur in the training split (report leak-free numbers)."),
)

# Column groups that later stages add. Every column is nullable: a row a stage skipped
# (no face found, rejected) keeps nulls, and the stage's report says why.
GROUPS: dict[str, tuple[Column, ...]] = {
    "ferplus": (
        Column("ferplus_votes", pa.list_(pa.int8()), True,
               "The 10 FER+ crowd votes: neutral happiness surprise sadness anger disgust fear contempt unknown NF."),
    ),
    "faces": (
        Column("face_box", pa.list_(pa.int32()), True, "x, y, w, h of the chosen face in the source image."),
        Column("face_score", pa.float32(), True, "Detector confidence (1.0 for Haar, which has none)."),
        Column("face_count", pa.int16(), True, "Faces the detector found in the source image."),
        Column("face_model", pa.string(), True, "Detector and settings that produced the crop."),
        Column("face_source_pixel_hash", pa.string(), True,
               "pixel_hash of the image before the crop (pixel_hash itself is the crop's)."),
    ),
    "enhance": (
        Column("enhance_sr", pa.string(), True, "Super-resolution applied: none / bicubic / swinir:<ckpt>."),
        Column("enhance_color", pa.string(), True, "Colorization applied: none / gray2rgb / ddcolor:<ckpt>."),
        Column("enhance_model", pa.string(), True, "Checkpoint files (with sha256 prefix) and settings, JSON."),
        Column("source_pixel_hash", pa.string(), True, "pixel_hash of the image before enhancement."),
    ),
    "caption": (
        Column("caption", pa.string(), True, "Caption generated from the pixels only (never from the label)."),
        Column("caption_model", pa.string(), True, "Captioning model id/path and decoding settings, JSON."),
    ),
    "vqa": (
        Column("vqa_questions", pa.list_(pa.string()), True, "Questions asked, in order."),
        Column("vqa_answers", pa.list_(pa.string()), True, "Answers, aligned with vqa_questions."),
        Column("vqa_model", pa.string(), True, "VQA model id/path and settings, JSON."),
    ),
}


def _fields(cols: tuple[Column, ...]) -> list[pa.Field]:
    return [pa.field(c.name, c.type, nullable=c.nullable, metadata={"doc": c.doc}) for c in cols]


def schema_for(groups: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """Core schema plus the named column groups, in a fixed order."""
    cols = list(CORE)
    for g in GROUPS:
        if g in groups:
            cols.extend(GROUPS[g])
    unknown = set(groups) - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown column group(s) {sorted(unknown)}; known: {sorted(GROUPS)}")
    return pa.schema(_fields(tuple(cols)))


def groups_of(schema: pa.Schema) -> list[str]:
    """Which optional groups a schema carries (a group counts when all its columns are present)."""
    names = set(schema.names)
    return [g for g, cols in GROUPS.items() if all(c.name in names for c in cols)]


ALL_COLUMNS: dict[str, Column] = {c.name: c for c in CORE} | {
    c.name: c for cols in GROUPS.values() for c in cols
}


def describe() -> str:
    """Markdown table of every column (used by the README and `pipeline schema`)."""
    lines = ["| group | column | type | nullable | meaning |", "|---|---|---|---|---|"]
    for c in CORE:
        lines.append(f"| core | `{c.name}` | {c.type} | {'yes' if c.nullable else 'no'} | {c.doc} |")
    for g, cols in GROUPS.items():
        for c in cols:
            lines.append(f"| {g} | `{c.name}` | {c.type} | yes | {c.doc} |")
    return "\n".join(lines)
