"""`ckplus`: CK+48, `<class>/S005_001_00000011.png`. No official split: test is carved out
grouped by subject (`S005`); `sequence` = `S005_001`, `frame_index` = 11."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

from pipeline.layouts.base import IngestConfig, Source, is_image, subdirs
from pipeline.layouts.folders import has_split_dirs, read_class_folders
from pipeline.layouts.registry import register_layout

# The leading "S"-subject names CK+ uses; a file without one still ingests, ungrouped.
CKPLUS_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)")


def looks_like_ckplus(path: Path) -> bool:
    if not path.is_dir() or has_split_dirs(path):  # split folders: fer2013-folders or imagefolder
        return False
    return any(CKPLUS_NAME.match(f.name) for c in subdirs(path) for f in c.iterdir() if is_image(f))


@register_layout("ckplus", dataset="ckplus", detect=looks_like_ckplus, detect_order=80)
def read_ckplus(root: Path, cfg: IngestConfig) -> Source:
    src = read_class_folders(root, cfg, "ckplus")
    recs = []
    for r in src.records:
        m = CKPLUS_NAME.match(Path(r.source_path).name)
        if m:
            subj, seq, frame = m.group(1), f"{m.group(1)}_{m.group(2)}", int(m.group(3))
            r = replace(r, subject=subj, sequence=seq, frame_index=frame)
        recs.append(r)
    src.records = recs
    if not any(r.subject for r in recs):
        src.notes.append("no S###_###_ file names found: CK+ subjects unknown, test carved ungrouped")
    return src
