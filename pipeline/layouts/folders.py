"""The `[split/]<class>/<image or clip>/` tree that the imagefolder, fer2013-folders and ckplus
layouts read (ImageFolder's convention, plus clip sub-folders). Registers no layout itself."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from pipeline.layouts.base import (
    SPLIT_DIRS,
    IngestConfig,
    IngestError,
    Record,
    Source,
    has_image_suffix,
    is_image,
    label_map,
    relative,
    resolve_label_set,
    subdirs,
)


def has_split_dirs(root: Path) -> bool:
    """Does a top folder name a split (train/, test/, ...; any case)?"""
    return bool({d.name.lower() for d in subdirs(root)} & set(SPLIT_DIRS))


def class_records(class_dir: Path, root: Path, label: str, split: str | None, orig_split: str | None,
                  orig_of: Callable[[Path], str | None] | None = None) -> tuple[list[Record], list[str]]:
    """Images directly in a class folder are stills; sub-folders of images are clips (frames in
    name order), so a synth `videos/<class>/<clip>/` tree keeps its clips together. Returns the
    records and the non-image files skipped."""
    recs, skipped = [], []
    for f in sorted(class_dir.iterdir()):
        if f.is_dir():
            frames = sorted(x for x in f.iterdir() if is_image(x))
            clip = f"{class_dir.name}/{f.name}"
            for i, x in enumerate(frames):
                recs.append(Record(relative(x, root), label, split, orig_split, file=str(x), clip_id=clip,
                                   frame_index=i))
        elif has_image_suffix(f):
            orig = orig_of(f) if orig_of else orig_split
            recs.append(Record(relative(f, root), label, split, orig, file=str(f)))
        elif not f.name.startswith("."):
            skipped.append(relative(f, root))
    return recs, skipped


def read_class_folders(root: Path, cfg: IngestConfig, default_set: str,
                       orig_of: Callable[[Path], str | None] | None = None) -> Source:
    """`train/<class>/`, `test/<class>/` (other split names in SPLIT_DIRS), or a flat `<class>/`
    root; other top folders are skipped with a note. `orig_of(file)` names a still's original
    split (FER2013's file prefixes); else it is the split folder's name."""
    label_set = resolve_label_set(cfg, default_set)
    notes: list[str] = []
    tops = subdirs(root)
    split_dirs = [d for d in tops if d.name.lower() in SPLIT_DIRS]
    if split_dirs:
        for d in tops:
            if d not in split_dirs:
                notes.append(f"skipped {d.name}/ (not a split folder: {', '.join(sorted(SPLIT_DIRS))}); "
                             f"ingest it on its own, e.g. `pipeline ingest {d} --layout imagefolder`")
        parts = [(d, SPLIT_DIRS[d.name.lower()], d.name) for d in split_dirs]
    else:
        parts = [(root, None, None)]
    class_dirs = [(c, split, orig) for d, split, orig in parts for c in subdirs(d)]
    if not class_dirs:
        raise IngestError(f"{root}: no class folders found (expected <class>/*.png or train/<class>/*.png)")
    names = label_map((c.name for c, _, _ in class_dirs), label_set, "class folder(s)")
    records, skipped = [], []
    for c, split, orig in class_dirs:
        found, ignored = class_records(c, root, names[c.name], split, orig, orig_of)
        records += found
        skipped += ignored
    if skipped:
        notes.append(f"ignored {len(skipped)} non-image file(s), e.g. {skipped[0]}")
    return Source(label_set, records, notes=notes)
