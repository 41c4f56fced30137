"""`dfew`: DFEW part 2, `Clip/clip_224x224_16f/<clip>/*.jpg` plus
`EmoLabel_DataSplit/{train,test}(single-labeled)/set_N.csv` (`video_name,label`, ids 1..7).
One row per frame with `clip_id` and `frame_index`; `--fold N` picks the split (default 1)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pipeline.layouts.base import IngestConfig, IngestError, Record, Reject, Source, id_label, is_image, relative, resolve_label_set
from pipeline.layouts.registry import register_layout


def looks_like_dfew(path: Path) -> bool:
    return (path / "Clip").is_dir() and (path / "EmoLabel_DataSplit").is_dir()


def split_file(root: Path, kind: str, fold: int) -> Path:
    d = root / "EmoLabel_DataSplit" / f"{kind}(single-labeled)"
    for cand in (d / f"set_{fold}.csv", d / f"set{fold}.csv"):
        if cand.exists():
            return cand
    raise IngestError(f"DFEW fold {fold}: no {d}/set_{fold}.csv (folds 1..5; pick one with --fold N)")


@register_layout("dfew", dataset="dfew", detect=looks_like_dfew, detect_order=20)
def read_dfew(root: Path, cfg: IngestConfig) -> Source:
    label_set = resolve_label_set(cfg, "dfew")
    clips_root = root / "Clip" / "clip_224x224_16f"
    if not clips_root.is_dir():
        raise IngestError(f"{clips_root} not found: DFEW part 2 needs Clip/clip_224x224_16f/<clip>/*.jpg")
    recs, rejects = [], []
    for kind in ("train", "test"):
        fold_file = split_file(root, kind, cfg.fold)
        orig = f"set_{cfg.fold}:{kind}"
        with open(fold_file, newline="") as f:
            split_rows = list(csv.reader(f))
        for n, row in enumerate(split_rows, 1):
            if not row or not row[0].strip():
                continue
            clip, last = row[0].strip(), row[-1].strip()
            if not last.isdigit():
                if n == 1:  # header, e.g. video_name,label
                    continue
                raise IngestError(f"{fold_file}:{n}: label {last!r} is not an id 1..{len(label_set)}")
            lab = id_label(int(last), label_set, 1, f"{fold_file.name}:{n}")
            d = clips_root / clip
            if not d.is_dir() and clip.isdigit():
                d = clips_root / clip.zfill(5)
            frames = sorted(x for x in d.iterdir() if is_image(x)) if d.is_dir() else []
            if not frames:
                rejects.append(Reject(f"Clip/clip_224x224_16f/{clip}", "clip folder missing or empty", "missing"))
                continue
            for i, x in enumerate(frames):
                digits = re.findall(r"\d+", x.stem)
                recs.append(Record(relative(x, root), lab, kind, orig, file=str(x), clip_id=d.name,
                                   frame_index=int(digits[-1]) if digits else i))
    return Source(label_set, recs, rejects=rejects)
