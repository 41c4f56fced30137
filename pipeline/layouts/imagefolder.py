"""`imagefolder`: `train/<class>/*`, `test/<class>/*` (also training, val, validation, testing),
or a flat `<class>/*` root; a sub-folder of images in a class folder is a clip. The catch-all:
auto picks it last. Rules: docs/ingest.md "ImageFolder"."""

from __future__ import annotations

from pathlib import Path

from features.labels import LABEL_SETS
from pipeline.layouts.base import IngestConfig, Source, is_image, subdirs
from pipeline.layouts.folders import has_split_dirs, read_class_folders
from pipeline.layouts.registry import register_layout


def looks_like_imagefolder(path: Path) -> bool:
    if not path.is_dir():
        return False
    if has_split_dirs(path):
        return True
    classes = subdirs(path)
    return bool(classes) and any(is_image(f) or f.is_dir() for c in classes for f in c.iterdir())


@register_layout("imagefolder", dataset=None, detect=looks_like_imagefolder, detect_order=90)
def read_imagefolder(root: Path, cfg: IngestConfig) -> Source:
    # the label set named like --dataset when one is registered (synth), else FER2013's
    return read_class_folders(root, cfg, cfg.dataset if cfg.dataset in LABEL_SETS else "fer2013")
