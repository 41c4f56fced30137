"""`rafdb` and `rafdb-compound`: RAF-DB, `Image/aligned/{train,test}_NNNNN_aligned.jpg` plus
`EmoLabel/list_patition_label.txt` (`train_00001.jpg 5`, ids from 1 in the label set's order).
The split is the name prefix. Auto picks the compound set when an id above 7 appears."""

from __future__ import annotations

from pathlib import Path

from pipeline.layouts.base import IngestConfig, IngestError, Record, Reject, Source, id_label, relative, resolve_label_set
from pipeline.layouts.registry import register_layout

LABEL_FILE = Path("EmoLabel") / "list_patition_label.txt"


def label_ids(label_file: Path) -> list[int]:
    ids = []
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1].isdigit():
            ids.append(int(parts[-1]))
    return ids


def is_compound(path: Path) -> bool | None:
    """None when PATH is no RAF-DB tree, else whether its label ids go past the 7 basic ones."""
    if not ((path / LABEL_FILE).exists() and (path / "Image").is_dir()):
        return None
    ids = label_ids(path / LABEL_FILE)
    return bool(ids) and max(ids) > 7


def read_rafdb(root: Path, cfg: IngestConfig, compound: bool) -> Source:
    label_set = resolve_label_set(cfg, "rafdb-compound" if compound else "rafdb")
    label_file = root / LABEL_FILE
    if not label_file.exists():
        raise IngestError(f"{label_file} not found: RAF-DB needs EmoLabel/list_patition_label.txt and Image/aligned/")
    aligned, original = root / "Image" / "aligned", root / "Image" / "original"
    recs, rejects = [], []
    for n, line in enumerate(label_file.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2 or not parts[-1].isdigit():
            raise IngestError(f"{label_file}:{n}: expected '<name>.jpg <label id>', got {line!r}")
        name, lab = parts[0], id_label(int(parts[-1]), label_set, 1, f"{label_file.name}:{n}")
        stem = Path(name).stem
        candidates = [aligned / f"{stem}_aligned{Path(name).suffix}", aligned / name, original / name]
        f = next((c for c in candidates if c.exists()), None)
        if f is None:
            rejects.append(Reject(f"Image/aligned/{stem}_aligned.jpg", "listed in list_patition_label.txt but missing",
                                  "missing"))
            continue
        split = "test" if stem.startswith("test") else "train"
        recs.append(Record(relative(f, root), lab, split, split, file=str(f)))
    return Source(label_set, recs, rejects=rejects)


@register_layout("rafdb", dataset="rafdb", detect=lambda p: is_compound(p) is False, detect_order=10)
def read_basic(root: Path, cfg: IngestConfig) -> Source:
    return read_rafdb(root, cfg, compound=False)


@register_layout("rafdb-compound", dataset="rafdb-compound", detect=lambda p: is_compound(p) is True,
                 detect_order=10)
def read_compound(root: Path, cfg: IngestConfig) -> Source:
    return read_rafdb(root, cfg, compound=True)
