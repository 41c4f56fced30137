"""`fer2013-folders`: Kaggle's FER2013 images, `train/<class>/Training_*.jpg` and
`test/<class>/{PublicTest,PrivateTest}_*.jpg`; the file prefixes become `orig_split`."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from pipeline.layouts.base import IngestConfig, Source, subdirs
from pipeline.layouts.folders import has_split_dirs, read_class_folders
from pipeline.layouts.registry import register_layout

FER_PREFIX = re.compile(r"^(Training|PublicTest|PrivateTest)_")


def looks_like_fer2013_folders(path: Path) -> bool:
    if not path.is_dir() or not has_split_dirs(path):
        return False
    return any((path / d).is_dir() and any(FER_PREFIX.match(f.name) for c in subdirs(path / d) for f in c.iterdir())
               for d in ("train", "test"))


def orig_split_of(f: Path) -> str | None:
    m = FER_PREFIX.match(f.name)
    return m.group(1) if m else None


@register_layout("fer2013-folders", dataset="fer2013", detect=looks_like_fer2013_folders, detect_order=70)
def read_fer2013_folders(root: Path, cfg: IngestConfig) -> Source:
    src = read_class_folders(root, cfg, "fer2013", orig_of=orig_split_of)
    src.records = [r if r.orig_split else replace(r, orig_split="Training" if r.split == "train" else "Test")
                   for r in src.records]
    return src
