"""Dataset ingestion, the stage: a layout's reader (pipeline/layouts/, one module per layout)
describes a dataset on disk as records; this module decodes and hashes them, carves validation
(and test, when the dataset has none) out of the training split, flags duplicates and leaks, and
returns one table per split in the manifest schema, then writes them as one set.

Readers only *describe* samples (path or bytes, label, original split, grouping keys); decoding
happens once, in `decode_records`, so every layout gets the same rejects handling and hashing.
Nothing here prints: the CLI passes a `progress` callback.
"""

from __future__ import annotations

import re
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from features import images
from features.labels import LabelSet
from features.manifest import sample_id, to_table, write_manifest_set
from features.schema import SPLITS
from pipeline.layouts import detect_layout, get_layout
from pipeline.layouts.base import JOIN_OPTIONS, IngestConfig, IngestError, Record, Reject, Source
from pipeline.layouts.registry import Layout, not_found

Progress = Callable[[int, int], None]


@dataclass
class IngestResult:
    tables: dict[str, pa.Table]
    label_set: LabelSet
    layout: str
    dataset: str
    rejects: list[Reject]
    notes: list[str]
    duplicates: dict
    producer: dict

    @property
    def bad_images(self) -> int:
        return sum(r.kind != "dropped" for r in self.rejects)

    @property
    def dropped(self) -> Counter:
        return Counter(r.reason for r in self.rejects if r.kind == "dropped")


# --------------------------------------------------------------------------- reading

def resolve_layout(path: Path, cfg: IngestConfig) -> Layout:
    """--layout NAME, or the detected one; a layout may hand PATH to another when an option is set
    (fer2013-csv with --ferplus-csv is read as ferplus)."""
    layout = get_layout(detect_layout(path) if cfg.layout == "auto" else cfg.layout)
    for option, other in layout.becomes.items():
        if getattr(cfg, option):
            layout = get_layout(other)
    return layout


def read_source(path: Path, layout: Layout, cfg: IngestConfig) -> Source:
    """The layout's reader, once the options and PATH suit it (IngestError saying what to pass)."""
    for option, hint in JOIN_OPTIONS.items():
        if getattr(cfg, option) and option not in layout.joins:
            raise IngestError(hint)
    if path.is_file() and not layout.reads_files:
        raise IngestError(f"{path} is a file; the {layout.name} layout reads a folder")
    return layout.read(path, cfg)


# --------------------------------------------------------------------------- decoding

def pixels_from_text(text: str) -> np.ndarray:
    """fer2013.csv pixel text (space-separated 0..255, a square) -> a grayscale image; BadImage."""
    try:
        vals = np.array(text.split(), dtype=np.int64)
    except ValueError:
        bad = next((v for v in text.split() if not v.lstrip("-").isdigit()), "?")
        raise images.BadImage(f"pixels: {bad[:20]!r} is not a number") from None
    side = int(round(len(vals) ** 0.5))
    if side * side != len(vals) or len(vals) == 0:
        raise images.BadImage(f"pixels: {len(vals)} values do not make a square image")
    if vals.min() < 0 or vals.max() > 255:
        raise images.BadImage("pixels: values outside 0..255")
    return vals.astype(np.uint8).reshape(side, side)


def _decode_one(rec: Record, max_pixels: int) -> dict | Reject:
    try:
        if rec.pixels is not None:
            arr = pixels_from_text(rec.pixels) if isinstance(rec.pixels, str) else rec.pixels
            data, fmt = images.encode(arr, "png"), "png"
        else:
            if rec.data is not None:
                data = rec.data
            else:
                try:
                    data = Path(rec.file).read_bytes()
                except OSError as e:
                    return Reject(rec.source_path, f"cannot read: {e.strerror or e}")
            arr, fmt = images.decode(data, max_pixels)
    except images.BadImage as e:
        return Reject(rec.source_path, str(e))  # features.images strips PIL's object addresses
    return {"image": data, "image_format": fmt, "width": int(arr.shape[1]), "height": int(arr.shape[0]),
            "channels": images.channels(arr), "pixel_hash": images.pixel_hash(arr)}


def _decode_chunk(chunk: list[Record], max_pixels: int) -> list[dict | Reject]:
    return [_decode_one(r, max_pixels) for r in chunk]


def decode_records(records: list[Record], max_pixels: int = images.MAX_PIXELS, workers: int = 0,
                   progress: Progress | None = None, chunk: int = 1024) -> list[dict | Reject]:
    """Decode + hash every record, in order. A process pool when workers > 1: Pillow holds the GIL
    while decoding, so threads do not help (measured: docs/ingest.md). Decoding stays with Pillow
    (features.images.decode) although cv2.imdecode is ~5x faster on 48x48 JPEGs: another decoder
    could give other pixels, and pixel_hash must agree with every later stage's decode."""
    if workers <= 0:
        import os

        workers = min(os.cpu_count() or 1, 4) if len(records) >= 4096 else 1
    chunks = [records[i:i + chunk] for i in range(0, len(records), chunk)]
    out: list[dict | Reject] = []
    if workers <= 1 or len(chunks) <= 1:
        results = (_decode_chunk(c, max_pixels) for c in chunks)
    else:
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers)
        results = pool.map(_decode_chunk, chunks, [max_pixels] * len(chunks))
    try:
        for res in results:
            out.extend(res)
            if progress:
                progress(len(out), len(records))
    finally:
        if workers > 1 and len(chunks) > 1:
            pool.shutdown()
    return out


# --------------------------------------------------------------------------- splitting

def holdout(labels: Sequence[str], groups: Sequence[str], fraction: float, seed: int) -> tuple[np.ndarray, str]:
    """A seeded, stratified, grouped hold-out: boolean mask of the rows held out, and how.

    Groups whose rows share one label (clips; exact-duplicate pixels by majority) are split with
    StratifiedShuffleSplit over one entry per group, which honours `fraction` exactly; groups that
    mix labels (a CK+ subject) need StratifiedGroupKFold, whose first of round(1/fraction) folds is
    held out. When a class is too small to stratify, the split falls back to an unstratified one."""
    from sklearn.model_selection import (GroupShuffleSplit, ShuffleSplit, StratifiedGroupKFold,
                                         StratifiedShuffleSplit)

    n = len(labels)
    mask = np.zeros(n, dtype=bool)
    if fraction <= 0 or n < 2:
        return mask, "none"
    keys, ginv = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    if len(keys) < 2:
        return mask, "none (a single group cannot be split)"
    lab = np.asarray(labels, dtype=object).astype(str)
    per_group: dict[int, Counter] = defaultdict(Counter)
    for g, y in zip(ginv, lab):
        per_group[g][y] += 1
    # Exact-duplicate groups ("px:" keys) are stratified by their most common label: the few
    # with conflicting labels (57 in FER2013) do not justify StratifiedGroupKFold's slow path.
    uniform = all(len(per_group[g]) == 1 or keys[g].startswith("px:") for g in range(len(keys)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn's "least populated class" notice
        if uniform:
            glab = np.array([per_group[g].most_common(1)[0][0] for g in range(len(keys))])
            try:
                held = next(StratifiedShuffleSplit(1, test_size=fraction, random_state=seed)
                            .split(np.zeros(len(keys)), glab))[1]
                how = "StratifiedShuffleSplit over groups"
            except ValueError:
                held = next(ShuffleSplit(1, test_size=fraction, random_state=seed).split(np.zeros(len(keys))))[1]
                how = "ShuffleSplit over groups (a class has too few groups to stratify)"
            mask[np.isin(ginv, held)] = True
            return mask, how
        k = max(2, round(1 / fraction))
        try:
            held = next(StratifiedGroupKFold(k, shuffle=True, random_state=seed).split(np.zeros(n), lab, ginv))[1]
            how = f"StratifiedGroupKFold(n_splits={k}) first fold"
        except ValueError:
            held = next(GroupShuffleSplit(1, test_size=fraction, random_state=seed).split(np.zeros(n), lab, ginv))[1]
            how = "GroupShuffleSplit (too few groups to stratify)"
    mask[held] = True
    return mask, how


def _group_key(row: dict) -> tuple[str, str]:
    for k in ("subject", "clip_id", "sequence"):
        if row.get(k):
            return k, f"{k}:{row[k]}"
    # no identity known: keep exact duplicates together so val never holds a copy of a train image
    return "pixel_hash", f"px:{row['pixel_hash']}"


def assign_splits(rows: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict:
    """Set row['split'] in place; returns how it was done (for the producer metadata)."""
    info: dict = {"seed": seed}
    keyed = [_group_key(r) for r in rows]
    info["grouped_by"] = sorted({k for k, _ in keyed})
    own_test = any(r["_split"] == "test" for r in rows)
    if not own_test and test_fraction > 0:
        pool = list(range(len(rows)))
        mask, how = holdout([rows[i]["label"] for i in pool], [keyed[i][1] for i in pool], test_fraction, seed)
        for i, m in zip(pool, mask):
            rows[i]["_split"] = "test" if m else "train"
        info["test"] = {"carved_from": "all rows (the dataset has no test split)", "method": how,
                        "fraction": test_fraction}
    elif own_test:
        info["test"] = {"carved_from": "the dataset's own test split"}
    else:
        info["test"] = {"carved_from": "none (the dataset has no test split and the test fraction is 0)"}
    pool = [i for i, r in enumerate(rows) if r["_split"] != "test"]
    mask, how = holdout([rows[i]["label"] for i in pool], [keyed[i][1] for i in pool], val_fraction, seed)
    for i, m in zip(pool, mask):
        rows[i]["split"] = "val" if m else "train"
    for r in rows:
        if r["_split"] == "test":
            r["split"] = "test"
    info["val"] = {"carved_from": "the training split only", "method": how, "fraction": val_fraction,
                   "achieved": round(float(mask.mean()), 4) if len(mask) else 0.0}
    return info


# --------------------------------------------------------------------------- duplicates

def flag_duplicates(rows: list[dict]) -> dict:
    """Set row['leak'] on test rows whose pixels occur in train/val; return the duplicate figures
    (same definitions as PROVENANCE.md)."""
    train_hashes = {r["pixel_hash"] for r in rows if r["split"] != "test"}
    by_hash: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        r["leak"] = r["split"] == "test" and r["pixel_hash"] in train_hashes
        by_hash[r["pixel_hash"]].append(r)
    groups = [g for g in by_hash.values() if len(g) > 1]

    def within(g, test):
        k = sum((r["split"] == "test") == test for r in g)
        return max(0, k - 1)

    leaks = Counter(r["orig_split"] or "test" for r in rows if r["leak"])
    return {
        "groups": len(groups),
        "redundant_copies": sum(len(g) - 1 for g in groups),
        "redundant_within_train_val": sum(within(g, False) for g in groups),
        "redundant_within_test": sum(within(g, True) for g in groups),
        "groups_train_test": sum(any(r["split"] == "test" for r in g) and any(r["split"] != "test" for r in g)
                                 for g in groups),
        "groups_conflicting_labels": sum(len({r["label"] for r in g}) > 1 for g in groups),
        "test_rows_leaked": sum(leaks.values()),
        "test_rows_leaked_by_orig_split": dict(sorted(leaks.items())),
    }


# --------------------------------------------------------------------------- the stage

def ingest(path: str | Path, cfg: IngestConfig, progress: Progress | None = None) -> IngestResult:
    """Dataset on disk -> one manifest table per split (train / val / test), plus rejects."""
    path = Path(path)
    if not path.exists():
        raise not_found(path)
    if not 0 <= cfg.val_fraction < 1 or not 0 <= cfg.test_fraction < 1:
        raise IngestError("--val-fraction and --test-fraction must be in [0, 1)")
    layout = resolve_layout(path, cfg)
    dataset = cfg.dataset or layout.dataset or _slug(path)
    src = read_source(path, layout, cfg)
    if not src.records:
        raise IngestError(f"{path}: no images found for layout {layout.name!r} "
                          f"({len(src.rejects)} rows rejected or dropped); put image files "
                          f"({', '.join(sorted(images.IMAGE_EXTS))}) where that layout reads them "
                          "(docs/ingest.md) or pass the --layout that matches the folder")
    decoded = decode_records(src.records, cfg.max_pixels, cfg.workers, progress)
    rejects = list(src.rejects)
    rows = []
    for rec, d in zip(src.records, decoded):
        if isinstance(d, Reject):
            rejects.append(d)
            continue
        rows.append(_row(rec, d, dataset, src.label_set))
    if not rows:
        raise IngestError(f"{path}: every image was rejected ({len(rejects)}); first: "
                          f"{rejects[0].source_path}: {rejects[0].reason}")
    split_info = assign_splits(rows, cfg.val_fraction, cfg.test_fraction, cfg.seed)
    dups = flag_duplicates(rows)
    tables = {}
    for s in SPLITS:
        part = [r for r in rows if r["split"] == s]
        if part:
            tables[s] = to_table(part, groups=src.groups)
    producer = {
        "command": "pipeline ingest", "source": str(path), "layout": layout.name, "dataset": dataset,
        "label_set": src.label_set.name, "config": {k: v for k, v in asdict(cfg).items() if k != "workers"},
        "splits": split_info, "rows": {s: t.num_rows for s, t in tables.items()},
        "rejects": sum(r.kind != "dropped" for r in rejects),
        "dropped": dict(Counter(r.reason for r in rejects if r.kind == "dropped")),
        "duplicates": dups,
    }
    return IngestResult(tables, src.label_set, layout.name, dataset, rejects, src.notes, dups, producer)


def _slug(path: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.resolve().name.lower()).strip("-") or "dataset"


def _row(rec: Record, d: dict, dataset: str, label_set: LabelSet) -> dict:
    row = {
        "sample_id": sample_id(dataset, rec.source_path), "dataset": dataset, "orig_split": rec.orig_split,
        "source_path": rec.source_path, "label": rec.label, "label_id": label_set.index(rec.label),
        "label_set": label_set.name, "subject": rec.subject, "sequence": rec.sequence, "clip_id": rec.clip_id,
        "frame_index": rec.frame_index, "synthetic": False, "parent_ids": None, "_split": rec.split, **d,
    }
    if rec.votes is not None:
        row["ferplus_votes"] = list(rec.votes)
    return row


def split_paths(prefix: str | Path) -> dict[str, Path]:
    prefix = Path(prefix)
    return {s: prefix.with_name(f"{prefix.name}_{s}.parquet") for s in SPLITS}


def write_result(result: IngestResult, prefix: str | Path) -> tuple[dict[str, Path], list[Path]]:
    """Write PREFIX_{train,val,test}.parquet as one set (features.manifest.write_manifest_set: one
    run id stamped in every file, all written before any is renamed) and delete a stale split file
    this run did not produce, so a trainer never pairs a fresh train with an old val. A kill
    between the renames leaves files whose stamps differ, which every reader of several of them
    refuses (`check_same_set`). Returns (written, removed)."""
    paths = split_paths(prefix)
    items = [(result.tables[s], p, result.label_set, result.producer | {"split": s})
             for s, p in paths.items() if s in result.tables]
    done = write_manifest_set(items)
    written = {s: p for s, p in zip([s for s in paths if s in result.tables], done)}
    removed = []
    for s, p in paths.items():
        if s not in result.tables and p.exists():
            p.unlink()
            removed.append(p)
    return written, removed


def check_outputs(prefix: str | Path, rejects: str | Path | None = None) -> None:
    """Before any image is decoded: every file ingest may write can be written (OutputError
    names the first that cannot), and temp files of a killed earlier ingest are swept."""
    from features.manifest import check_replaceable, check_writable, sweep_stale_tmp

    for p in split_paths(prefix).values():
        check_replaceable(p, "--out")
    check_writable(Path(rejects or f"{prefix}_rejects.csv"), "--rejects")
    sweep_stale_tmp(Path(prefix).parent)


def write_rejects(rejects: list[Reject], path: str | Path) -> Path:
    """Rejects report: CSV (or Parquet by extension) with source_path, reason, kind."""
    from features.manifest import atomic_write_bytes

    path = Path(path)
    table = pa.table({"source_path": [r.source_path for r in rejects], "reason": [r.reason for r in rejects],
                      "kind": [r.kind for r in rejects]})
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return atomic_write_bytes(path, lambda tmp: pq.write_table(table, tmp))
    import pyarrow.csv as pacsv

    return atomic_write_bytes(path, lambda tmp: pacsv.write_csv(table, tmp))
