"""`fer2013-csv`: the original `fer2013.csv` (`emotion,pixels,Usage`; classes in
`FER2013_CSV_ORDER`), as a file or a folder holding it. The split is `Usage`; the pixel text is
PNG-encoded losslessly at decoding (the CSV has no encoded bytes); `source_path` is
`fer2013.csv#<row>`. With `--ferplus-csv` it is read as `ferplus`."""

from __future__ import annotations

import csv
from pathlib import Path

from pipeline.layouts.base import IngestConfig, IngestError, Record, Source, label_map, resolve_label_set
from pipeline.layouts.fer_files import fer2013_rows, usage_split
from pipeline.layouts.registry import register_layout


def looks_like_fer2013_csv(path: Path) -> bool:
    if path.is_dir():
        return (path / "fer2013.csv").exists()
    if path.suffix.lower() != ".csv":
        return False
    with open(path, newline="") as f:
        header = [h.strip().lower() for h in next(csv.reader(f), [])]
    return {"emotion", "pixels"} <= set(header)


@register_layout("fer2013-csv", dataset="fer2013", detect=looks_like_fer2013_csv, detect_order=40,
                 reads_files=True, becomes={"ferplus_csv": "ferplus"})
def read_fer2013_csv(path: Path, cfg: IngestConfig) -> Source:
    if path.is_dir():
        path = path / "fer2013.csv"
    if not path.exists():
        raise IngestError(f"{path} not found: the fer2013-csv layout reads fer2013.csv (emotion,pixels,Usage)")
    label_set = resolve_label_set(cfg, "fer2013")
    rows, rejects = fer2013_rows(path)
    names = label_map({c for _, c, _, _ in rows}, label_set, "label(s)")
    # the pixel text is parsed at decoding, so a malformed row becomes a reject, not a crash
    recs = [Record(f"{path.name}#{i}", names[c], usage_split(u), u, pixels=p) for i, c, u, p in rows]
    return Source(label_set, recs, rejects=rejects)
