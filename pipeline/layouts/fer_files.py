"""The FER2013 and FER+ files that the fer2013-csv, ferplus and parquet layouts share: the rows
of fer2013.csv, the FER+ majority rule, and the two FER+ vote files (fer2013new.csv, joined by
row; ferplus.parquet, joined by `fer2013_source_path`). Registers no layout itself."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence

from features.labels import FER2013_CSV_ORDER, FERPLUS_VOTE_COLUMNS
from pipeline.layouts.base import IngestConfig, IngestError, Record, Reject, Source, label_map, resolve_label_set

FER2013_USAGES = ("training", "train", "publictest", "privatetest")


def read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    """(stripped header, rows); IngestError on an empty file."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise IngestError(f"{path} is empty")
    return [h.strip() for h in rows[0]], rows[1:]


def fer2013_rows(path: Path) -> tuple[list[tuple[int, str, str, str]], list[Reject]]:
    """fer2013.csv -> (row, csv class name, usage, pixels text) and rows that are not usable."""
    header, rows = read_csv_rows(path)
    low = [h.lower() for h in header]
    try:
        ie, ip = low.index("emotion"), low.index("pixels")
    except ValueError:
        raise IngestError(f"{path}: expected columns emotion,pixels,Usage; found {', '.join(header)}") from None
    iu = low.index("usage") if "usage" in low else None
    out, rejects = [], []
    for i, row in enumerate(rows):
        where = f"{path.name}#{i}"
        try:
            k = int(row[ie])
        except (ValueError, IndexError):
            rejects.append(Reject(where, f"emotion {row[ie] if len(row) > ie else ''!r} is not 0..6"))
            continue
        if not 0 <= k < len(FER2013_CSV_ORDER):
            raise IngestError(f"{where}: emotion {k} is outside 0..6 (fer2013.csv order: "
                              f"{', '.join(FER2013_CSV_ORDER)})")
        if len(row) <= ip:
            rejects.append(Reject(where, "no pixels field"))
            continue
        if iu is None:
            usage = "Training"
        elif len(row) <= iu or not row[iu].strip():
            rejects.append(Reject(where, "no Usage field (Training, PublicTest or PrivateTest)"))
            continue
        else:
            usage = row[iu].strip()
            if usage.lower() not in FER2013_USAGES:
                rejects.append(Reject(where, f"Usage {usage[:30]!r} is not Training, PublicTest or PrivateTest"))
                continue
        out.append((i, FER2013_CSV_ORDER[k], usage, row[ip]))
    return out, rejects


def usage_split(usage: str) -> str:
    return "train" if usage.lower() in ("training", "train") else "test"


def ferplus_majority(votes: Sequence[int]) -> tuple[str | None, str | None]:
    """FERPlus 'majority' mode (its src/ferplus.py, PROVENANCE.md): drop single votes, the winner
    needs more than half of what remains; unknown / NF winners are no label.
    Returns (vote column name, None) or (None, why it was dropped)."""
    v = [x if x > 1 else 0 for x in votes]
    total = sum(v)
    if total == 0:
        return None, "ferplus: no majority"
    win = v.index(max(v))  # the first of equal counts, as numpy's argmax
    if v[win] * 2 <= total:
        return None, "ferplus: no majority"
    name = FERPLUS_VOTE_COLUMNS[win]
    if name == "unknown":
        return None, "ferplus: unknown"
    if name == "NF":
        return None, "ferplus: not a face"
    return name, None


def read_ferplus_votes(path: Path) -> dict[str, tuple[int, ...]]:
    """ferplus.parquet (PROVENANCE.md) -> source_path of the matched FER2013 image -> 10 votes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.exists():
        raise IngestError(f"{path} not found (the FER+ votes joined by fer2013_source_path)")
    need = ["fer2013_source_path", *FERPLUS_VOTE_COLUMNS]
    try:
        table = pq.read_table(path, columns=need)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise IngestError(f"{path}: expected columns {', '.join(need)} ({e})") from None
    keys = table.column("fer2013_source_path").to_pylist()
    votes = np.stack([table.column(c).to_numpy(zero_copy_only=False) for c in FERPLUS_VOTE_COLUMNS], 1)
    return {k: tuple(int(x) for x in v) for k, v in zip(keys, votes) if k is not None}


def join_ferplus_csv(fer_csv: Path, new_csv: Path, cfg: IngestConfig) -> Source:
    """fer2013.csv + fer2013new.csv (same rows, same order, `Usage` checked on every row) -> FER+
    records with their votes; rows the majority rule gives no label are dropped, by reason."""
    if not new_csv.exists():
        raise IngestError(f"{new_csv} not found (FER+ votes file fer2013new.csv)")
    label_set = resolve_label_set(cfg, "ferplus")
    rows, rejects = fer2013_rows(fer_csv)
    header, votes_rows = read_csv_rows(new_csv)
    missing = [c for c in FERPLUS_VOTE_COLUMNS if c not in header]
    if missing or "Usage" not in header:
        raise IngestError(f"{new_csv}: expected FER+ columns Usage,Image name,{','.join(FERPLUS_VOTE_COLUMNS)}; "
                          f"missing {missing or ['Usage']}")
    if len(votes_rows) != len(rows) + len(rejects):
        raise IngestError(f"{new_csv} has {len(votes_rows)} rows but {fer_csv} has {len(rows) + len(rejects)}: "
                          "fer2013new.csv must be the FER+ file for this very fer2013.csv (same row order)")
    iu, iname = header.index("Usage"), header.index("Image name") if "Image name" in header else None
    ivotes = [header.index(c) for c in FERPLUS_VOTE_COLUMNS]
    names = label_map(FERPLUS_VOTE_COLUMNS[:8], label_set, "FER+ class(es)")
    recs = []
    for i, _, usage, pix in rows:
        vr = votes_rows[i]
        where = f"{fer_csv.name}#{i}"
        if vr[iu].strip() != usage:
            raise IngestError(f"{new_csv.name} row {i} says Usage {vr[iu]!r}, {fer_csv.name} says {usage!r}: "
                              "the two files are not aligned")
        if iname is not None and not vr[iname].strip():
            rejects.append(Reject(where, "ferplus: not a face (no image name)", "dropped"))
            continue
        votes = tuple(int(vr[j] or 0) for j in ivotes)
        name, why = ferplus_majority(votes)
        if name is None:
            rejects.append(Reject(where, why, "dropped"))
            continue
        recs.append(Record(where, names[name], usage_split(usage), usage, pixels=pix, votes=votes))
    return Source(label_set, recs, rejects=rejects, groups=("ferplus",))
