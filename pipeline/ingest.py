"""Dataset ingestion: a layout reader turns a dataset on disk into records, the stage decodes and
hashes them, carves validation (and test, when the dataset has none) out of the training split,
flags duplicates and leaks, and returns one table per split in the manifest schema.

Readers only *describe* samples (path or bytes, label, original split, grouping keys); decoding
happens once, in `decode_records`, so every layout gets the same rejects handling and hashing.
Nothing here prints: the CLI passes a `progress` callback.
"""

from __future__ import annotations

import csv
import re
import warnings
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import pyarrow as pa

from features import images
from features.labels import (
    FER2013_CSV_ORDER,
    FERPLUS_VOTE_COLUMNS,
    LABEL_SETS,
    LabelSet,
    custom_label_set,
    get_label_set,
)
from features.manifest import sample_id, to_table, write_manifest_set
from features.schema import SPLITS

LAYOUTS = ("fer2013-folders", "fer2013-csv", "ferplus", "ckplus", "rafdb", "rafdb-compound", "dfew",
           "imagefolder", "parquet")

SPLIT_DIRS = {"train": "train", "training": "train", "val": "train", "valid": "train",
              "validation": "train", "test": "test", "testing": "test"}
_CKPLUS_NAME = re.compile(r"^(S\d+)_(\d+)_(\d+)")
_FER_PREFIX = re.compile(r"^(Training|PublicTest|PrivateTest)_")
# The leading "S"-subject names CK+ uses; a file without one still ingests, ungrouped.

Progress = Callable[[int, int], None]


class IngestError(ValueError):
    """Input that cannot be ingested as given; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class IngestConfig:
    layout: str = "auto"
    dataset: str | None = None  # default: the layout's dataset key (or the folder name)
    val_fraction: float = 0.1
    test_fraction: float = 0.2  # used only when the dataset has no test split of its own
    seed: int = 0
    label_set: str | None = None
    labels: tuple[str, ...] | None = None
    ferplus_csv: str | None = None
    ferplus_parquet: str | None = None
    fold: int = 1
    max_pixels: int = images.MAX_PIXELS
    workers: int = 0  # 0 = auto: a process per core (at most 4) for 4,096+ images, else in-process


@dataclass(frozen=True, slots=True)
class Record:
    """One sample as a reader found it, before decoding."""

    source_path: str
    label: str  # a name of the resolved label set
    split: str | None  # "train" / "test" as the dataset says, None when it has no split
    orig_split: str | None = None
    file: str | None = None  # read from disk ...
    data: bytes | None = None  # ... or bytes already in hand ...
    pixels: str | np.ndarray | None = None  # ... or raw pixels (fer2013.csv text), PNG-encoded losslessly
    subject: str | None = None
    sequence: str | None = None
    clip_id: str | None = None
    frame_index: int | None = None
    votes: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Reject:
    source_path: str
    reason: str
    kind: str = "bad-image"  # bad-image | missing | dropped (a label rule, e.g. FER+ no majority)


@dataclass
class Source:
    """What a reader hands the stage."""

    label_set: LabelSet
    records: list[Record]
    rejects: list[Reject] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    groups: tuple[str, ...] = ()  # optional column groups the records fill


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


# --------------------------------------------------------------------------- labels

def resolve_label_set(cfg: IngestConfig, default: str) -> LabelSet:
    if cfg.labels:
        names = tuple(n.strip() for n in cfg.labels if n.strip())
        if not names:
            raise IngestError("--labels is empty; give class names separated by commas, e.g. --labels a,b,c")
        return custom_label_set(names, name=cfg.label_set or "custom")
    try:
        return get_label_set(cfg.label_set or default)
    except KeyError as e:
        raise IngestError(f"{e.args[0]}; or pass your own classes with --labels a,b,c") from None


def match_label(name: str, ls: LabelSet) -> str | None:
    """A folder / file label -> the label set's spelling: exact, then case-insensitive, then by
    canonical emotion (CK+ 'anger' lands on FER2013 'angry')."""
    if name in ls.names:
        return name
    low = name.lower()
    for n in ls.names:
        if n.lower() == low:
            return n
    probe = LabelSet("_probe", (name,))
    canon = probe.canonical[0]
    if canon is not None and canon in ls.canonical:
        return ls.names[ls.canonical.index(canon)]
    return None


def _label_map(found: Iterable[str], ls: LabelSet, what: str) -> dict[str, str]:
    out, unknown = {}, []
    for name in sorted(set(found)):
        m = match_label(name, ls)
        if m is None:
            unknown.append(name)
        out[name] = m
    if unknown:
        raise IngestError(
            f"unknown {what} {', '.join(map(repr, unknown))} for label set {ls.name!r} "
            f"(known: {', '.join(ls.names)}). Pass --label-set NAME (one of {', '.join(sorted(LABEL_SETS))}) "
            f"or your own classes with --labels {','.join(sorted(set(found)))}")
    return out


def _id_label(i: int, ls: LabelSet, base: int, where: str) -> str:
    k = i - base
    if not 0 <= k < len(ls):
        raise IngestError(
            f"{where}: label id {i} is outside {base}..{base + len(ls) - 1} of label set {ls.name!r} "
            f"({', '.join(ls.names)}); pass --labels with the dataset's class list in id order")
    return ls.names[k]


# --------------------------------------------------------------------------- layout detection

def _is_image(p: Path) -> bool:
    return p.is_file() and p.suffix.lower() in images.IMAGE_EXTS


def _subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def _has_parquet_images(p: Path) -> bool:
    import pyarrow.parquet as pq

    files = [p] if p.is_file() else sorted(p.glob("*.parquet"))
    for f in files:
        try:
            names = pq.read_schema(f).names
        except (pa.ArrowInvalid, OSError):
            continue
        if "image" in names and ("label" in names or "label_id" in names):
            return True
    return False


def detect_layout(path: Path) -> str:
    """Guess the layout from the tree; IngestError listing the layouts when no rule fits."""
    if not path.exists():
        raise IngestError(f"{path} does not exist. Give a dataset folder or file; layouts: {', '.join(LAYOUTS)}")
    if path.is_file():
        if path.suffix.lower() == ".csv":
            with open(path, newline="") as f:
                header = [h.strip().lower() for h in next(csv.reader(f), [])]
            if {"emotion", "pixels"} <= set(header):
                return "fer2013-csv"
        if path.suffix.lower() == ".parquet" and _has_parquet_images(path):
            return "parquet"
        raise _unrecognised(path)
    if (path / "EmoLabel" / "list_patition_label.txt").exists() and (path / "Image").is_dir():
        ids = _rafdb_ids(path / "EmoLabel" / "list_patition_label.txt")
        return "rafdb-compound" if ids and max(ids) > 7 else "rafdb"
    if (path / "Clip").is_dir() and (path / "EmoLabel_DataSplit").is_dir():
        return "dfew"
    if (path / "fer2013new.csv").exists() and (path / "fer2013.csv").exists():
        return "ferplus"
    if (path / "fer2013.csv").exists():
        return "fer2013-csv"
    if any(path.glob("*.parquet")):
        if (path / "ferplus.parquet").exists() and not _has_parquet_images(path):
            raise _unrecognised(path)
        if _has_parquet_images(path):
            return "parquet"
    tops = {d.name.lower() for d in _subdirs(path)}
    if tops & set(SPLIT_DIRS):
        for d in ("train", "test"):
            if (path / d).is_dir() and any(
                    _FER_PREFIX.match(f.name) for c in _subdirs(path / d) for f in c.iterdir()):
                return "fer2013-folders"
        return "imagefolder"
    classes = _subdirs(path)
    if classes and any(_CKPLUS_NAME.match(f.name) for c in classes for f in c.iterdir() if _is_image(f)):
        return "ckplus"
    if classes and any(_is_image(f) or f.is_dir() for c in classes for f in c.iterdir()):
        return "imagefolder"
    raise _unrecognised(path)


def _unrecognised(path: Path) -> IngestError:
    return IngestError(
        f"cannot tell the layout of {path}. Pass --layout, one of: {', '.join(LAYOUTS)} "
        "(see docs/ingest.md for what each expects)")


# --------------------------------------------------------------------------- readers

def _rel(p: Path, root: Path) -> str:
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()


def _class_records(class_dir: Path, root: Path, label: str, split: str | None, orig_split: str | None,
                   orig_of: Callable[[Path], str | None] | None = None) -> tuple[list[Record], list[str]]:
    """Images directly in a class folder are stills; sub-folders of images are clips (frames in
    name order), so a synth `videos/<class>/<clip>/` tree keeps its clips together."""
    recs, skipped = [], []
    for f in sorted(class_dir.iterdir()):
        if f.is_dir():
            frames = sorted(x for x in f.iterdir() if _is_image(x))
            clip = f"{class_dir.name}/{f.name}"
            for i, x in enumerate(frames):
                recs.append(Record(_rel(x, root), label, split, orig_split, file=str(x), clip_id=clip,
                                   frame_index=i))
        elif f.suffix.lower() in images.IMAGE_EXTS:
            orig = orig_of(f) if orig_of else orig_split
            recs.append(Record(_rel(f, root), label, split, orig, file=str(f)))
        elif not f.name.startswith("."):
            skipped.append(_rel(f, root))
    return recs, skipped


def read_imagefolder(root: Path, cfg: IngestConfig, default_set: str,
                     orig_of: Callable[[Path], str | None] | None = None) -> Source:
    ls = resolve_label_set(cfg, default_set)
    notes: list[str] = []
    tops = _subdirs(root)
    split_dirs = [d for d in tops if d.name.lower() in SPLIT_DIRS]
    if split_dirs:
        for d in tops:
            if d not in split_dirs:
                notes.append(f"skipped {d.name}/ (not a split folder: {', '.join(sorted(SPLIT_DIRS))}); "
                             f"ingest it on its own, e.g. `pipeline ingest {d} --layout imagefolder`")
        parts = [(d, SPLIT_DIRS[d.name.lower()], d.name) for d in split_dirs]
    else:
        parts = [(root, None, None)]
    class_dirs = [(c, split, orig) for d, split, orig in parts for c in _subdirs(d)]
    if not class_dirs:
        raise IngestError(f"{root}: no class folders found (expected <class>/*.png or train/<class>/*.png)")
    names = _label_map((c.name for c, _, _ in class_dirs), ls, "class folder(s)")
    records, skipped = [], []
    for c, split, orig in class_dirs:
        r, s = _class_records(c, root, names[c.name], split, orig, orig_of)
        records += r
        skipped += s
    if skipped:
        notes.append(f"ignored {len(skipped)} non-image file(s), e.g. {skipped[0]}")
    return Source(ls, records, notes=notes)


def read_fer2013_folders(root: Path, cfg: IngestConfig) -> Source:
    def orig(f: Path) -> str | None:
        m = _FER_PREFIX.match(f.name)
        return m.group(1) if m else None

    src = read_imagefolder(root, cfg, "fer2013", orig_of=orig)
    src.records = [r if r.orig_split else replace(r, orig_split="Training" if r.split == "train" else "Test")
                   for r in src.records]
    return src


def read_ckplus(root: Path, cfg: IngestConfig) -> Source:
    src = read_imagefolder(root, cfg, "ckplus")
    recs = []
    for r in src.records:
        m = _CKPLUS_NAME.match(Path(r.source_path).name)
        if m:
            subj, seq, frame = m.group(1), f"{m.group(1)}_{m.group(2)}", int(m.group(3))
            r = replace(r, subject=subj, sequence=seq, frame_index=frame)
        recs.append(r)
    src.records = recs
    if not any(r.subject for r in recs):
        src.notes.append("no S###_###_ file names found: CK+ subjects unknown, test carved ungrouped")
    return src


def _read_csv_rows(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        raise IngestError(f"{path} is empty")
    return [h.strip() for h in rows[0]], rows[1:]


def _pixels(text: str) -> np.ndarray:
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


def _fer_csv(path: Path) -> tuple[list[tuple[int, str, str, str]], list[Reject]]:
    """fer2013.csv -> (row, csv class name, usage, pixels text) and rows that are not usable."""
    header, rows = _read_csv_rows(path)
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


FER2013_USAGES = ("training", "train", "publictest", "privatetest")


def _usage_split(usage: str) -> str:
    return "train" if usage.lower() in ("training", "train") else "test"


def read_fer2013_csv(path: Path, cfg: IngestConfig) -> Source:
    if path.is_dir():
        path = path / "fer2013.csv"
    if not path.exists():
        raise IngestError(f"{path} not found: the fer2013-csv layout reads fer2013.csv (emotion,pixels,Usage)")
    if cfg.ferplus_csv:
        return _ferplus_from_csv(path, Path(cfg.ferplus_csv), cfg)
    ls = resolve_label_set(cfg, "fer2013")
    rows, rejects = _fer_csv(path)
    names = _label_map({c for _, c, _, _ in rows}, ls, "label(s)")
    # the pixel text is parsed in decode_records, so a malformed row becomes a reject, not a crash
    recs = [Record(f"{path.name}#{i}", names[c], _usage_split(u), u, pixels=p) for i, c, u, p in rows]
    return Source(ls, recs, rejects=rejects)


def ferplus_majority(votes: Sequence[int]) -> tuple[str | None, str | None]:
    """FERPlus 'majority' mode (its src/ferplus.py, PROVENANCE.md): drop single votes, the winner
    needs more than half of what remains; unknown / NF winners are no label.
    Returns (vote column name, None) or (None, why it was dropped)."""
    v = [x if x > 1 else 0 for x in votes]
    total = sum(v)
    if total == 0:
        return None, "ferplus: no majority"
    win = int(np.argmax(v))
    if v[win] * 2 <= total:
        return None, "ferplus: no majority"
    name = FERPLUS_VOTE_COLUMNS[win]
    if name == "unknown":
        return None, "ferplus: unknown"
    if name == "NF":
        return None, "ferplus: not a face"
    return name, None


def _ferplus_label_set(cfg: IngestConfig) -> LabelSet:
    return resolve_label_set(cfg, "ferplus")


def _ferplus_from_csv(fer_csv: Path, new_csv: Path, cfg: IngestConfig) -> Source:
    if not new_csv.exists():
        raise IngestError(f"{new_csv} not found (FER+ votes file fer2013new.csv)")
    ls = _ferplus_label_set(cfg)
    rows, rejects = _fer_csv(fer_csv)
    header, votes_rows = _read_csv_rows(new_csv)
    missing = [c for c in FERPLUS_VOTE_COLUMNS if c not in header]
    if missing or "Usage" not in header:
        raise IngestError(f"{new_csv}: expected FER+ columns Usage,Image name,{','.join(FERPLUS_VOTE_COLUMNS)}; "
                          f"missing {missing or ['Usage']}")
    if len(votes_rows) != len(rows) + len(rejects):
        raise IngestError(f"{new_csv} has {len(votes_rows)} rows but {fer_csv} has {len(rows) + len(rejects)}: "
                          "fer2013new.csv must be the FER+ file for this very fer2013.csv (same row order)")
    iu, iname = header.index("Usage"), header.index("Image name") if "Image name" in header else None
    ivotes = [header.index(c) for c in FERPLUS_VOTE_COLUMNS]
    names = _label_map(FERPLUS_VOTE_COLUMNS[:8], ls, "FER+ class(es)")
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
        recs.append(Record(where, names[name], _usage_split(usage), usage, pixels=pix, votes=votes))
    return Source(ls, recs, rejects=rejects, groups=("ferplus",))


def _rafdb_ids(label_file: Path) -> list[int]:
    ids = []
    for line in label_file.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[-1].isdigit():
            ids.append(int(parts[-1]))
    return ids


def read_rafdb(root: Path, cfg: IngestConfig, compound: bool) -> Source:
    ls = resolve_label_set(cfg, "rafdb-compound" if compound else "rafdb")
    label_file = root / "EmoLabel" / "list_patition_label.txt"
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
        name, lab = parts[0], _id_label(int(parts[-1]), ls, 1, f"{label_file.name}:{n}")
        stem = Path(name).stem
        candidates = [aligned / f"{stem}_aligned{Path(name).suffix}", aligned / name, original / name]
        f = next((c for c in candidates if c.exists()), None)
        if f is None:
            rejects.append(Reject(f"Image/aligned/{stem}_aligned.jpg", "listed in list_patition_label.txt but missing",
                                  "missing"))
            continue
        split = "test" if stem.startswith("test") else "train"
        recs.append(Record(_rel(f, root), lab, split, split, file=str(f)))
    return Source(ls, recs, rejects=rejects)


def _dfew_split_file(root: Path, kind: str, fold: int) -> Path:
    d = root / "EmoLabel_DataSplit" / f"{kind}(single-labeled)"
    for cand in (d / f"set_{fold}.csv", d / f"set{fold}.csv"):
        if cand.exists():
            return cand
    raise IngestError(f"DFEW fold {fold}: no {d}/set_{fold}.csv (folds 1..5; pick one with --fold N)")


def read_dfew(root: Path, cfg: IngestConfig) -> Source:
    ls = resolve_label_set(cfg, "dfew")
    clips_root = root / "Clip" / "clip_224x224_16f"
    if not clips_root.is_dir():
        raise IngestError(f"{clips_root} not found: DFEW part 2 needs Clip/clip_224x224_16f/<clip>/*.jpg")
    recs, rejects = [], []
    for kind in ("train", "test"):
        split_file = _dfew_split_file(root, kind, cfg.fold)
        orig = f"set_{cfg.fold}:{kind}"
        with open(split_file, newline="") as f:
            split_rows = list(csv.reader(f))
        for n, row in enumerate(split_rows, 1):
            if not row or not row[0].strip():
                continue
            clip, last = row[0].strip(), row[-1].strip()
            if not last.isdigit():
                if n == 1:  # header, e.g. video_name,label
                    continue
                raise IngestError(f"{split_file}:{n}: label {last!r} is not an id 1..{len(ls)}")
            lab = _id_label(int(last), ls, 1, f"{split_file.name}:{n}")
            d = clips_root / clip
            if not d.is_dir() and clip.isdigit():
                d = clips_root / clip.zfill(5)
            frames = sorted(x for x in d.iterdir() if _is_image(x)) if d.is_dir() else []
            if not frames:
                rejects.append(Reject(f"Clip/clip_224x224_16f/{clip}", "clip folder missing or empty", "missing"))
                continue
            for i, x in enumerate(frames):
                digits = re.findall(r"\d+", x.stem)
                recs.append(Record(_rel(x, root), lab, kind, orig, file=str(x), clip_id=d.name,
                                   frame_index=int(digits[-1]) if digits else i))
    return Source(ls, recs, rejects=rejects)


def _parquet_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    files = [f for f in sorted(root.glob("*.parquet")) if f.name != "ferplus.parquet"]
    if not files:
        raise IngestError(f"{root}: no *.parquet files (the parquet layout wants image bytes + label columns)")
    return files


def read_parquet(root: Path, cfg: IngestConfig) -> Source:
    import pyarrow.parquet as pq

    ferplus = _ferplus_votes(Path(cfg.ferplus_parquet)) if cfg.ferplus_parquet else None
    default = "ferplus" if ferplus else (cfg.dataset if cfg.dataset in LABEL_SETS else "fer2013")
    ls = resolve_label_set(cfg, default)
    recs, rejects, notes = [], [], []
    votes_file = (root if root.is_dir() else root.parent) / "ferplus.parquet"
    if ferplus is None and votes_file.exists():
        notes.append(f"ignored {votes_file} (FER+ crowd votes): these are the FER2013 labels; for FER+ "
                     f"labels and votes pass --layout ferplus, or --ferplus-parquet {votes_file}")
    for f in _parquet_files(root):
        t = pq.read_table(f)
        cols = set(t.column_names)
        if "image" not in cols or not ({"label", "label_id"} & cols):
            notes.append(f"skipped {f.name}: no image + label/label_id columns")
            continue
        n = t.num_rows
        col = lambda name: t.column(name).to_pylist() if name in cols else [None] * n  # noqa: E731
        data, lab, lid = col("image"), col("label"), col("label_id")
        usage = col("usage") if "usage" in cols else col("orig_split")
        split, paths = col("split"), col("source_path")
        file_split = SPLIT_DIRS.get(f.stem.lower())
        if ferplus is None:
            found = {x for x in lab if x is not None} if "label" in cols else set()
            names = _label_map(found, ls, "label(s)") if found else {}
        else:
            names = _label_map(FERPLUS_VOTE_COLUMNS[:8], ls, "FER+ class(es)")
        for i in range(n):
            sp = paths[i] or f"{f.name}#{i}"
            s = SPLIT_DIRS.get((split[i] or "").lower(), file_split)
            orig = usage[i] or split[i] or (f.stem if file_split else None)
            votes = None
            if ferplus is not None:
                votes = ferplus.get(sp)
                if votes is None:
                    rejects.append(Reject(sp, "ferplus: no FER+ row for this image", "dropped"))
                    continue
                name, why = ferplus_majority(votes)
                if name is None:
                    rejects.append(Reject(sp, why, "dropped"))
                    continue
                label = names[name]
            elif lab[i] is not None:
                label = names[lab[i]]
            elif lid[i] is not None:
                label = _id_label(int(lid[i]), ls, 0, f"{f.name}#{i}")
            else:
                rejects.append(Reject(sp, "no label", "bad-image"))
                continue
            recs.append(Record(sp, label, s, orig, data=data[i], votes=votes))
    return Source(ls, recs, rejects=rejects, notes=notes, groups=("ferplus",) if ferplus else ())


def _ferplus_votes(path: Path) -> dict[str, tuple[int, ...]]:
    """ferplus.parquet (PROVENANCE.md) -> source_path of the matched FER2013 image -> 10 votes."""
    import pyarrow.parquet as pq

    if not path.exists():
        raise IngestError(f"{path} not found (the FER+ votes joined by fer2013_source_path)")
    need = ["fer2013_source_path", *FERPLUS_VOTE_COLUMNS]
    try:
        t = pq.read_table(path, columns=need)
    except (pa.ArrowInvalid, KeyError, OSError) as e:
        raise IngestError(f"{path}: expected columns {', '.join(need)} ({e})") from None
    keys = t.column("fer2013_source_path").to_pylist()
    votes = np.stack([t.column(c).to_numpy(zero_copy_only=False) for c in FERPLUS_VOTE_COLUMNS], 1)
    return {k: tuple(int(x) for x in v) for k, v in zip(keys, votes) if k is not None}


def read_ferplus(root: Path, cfg: IngestConfig) -> Source:
    """FER+ from either fer2013.csv + fer2013new.csv, or the shared parquet + ferplus.parquet."""
    fer_csv = root if root.is_file() else root / "fer2013.csv"
    if root.is_file():
        root = root.parent
    if (root / "fer2013new.csv").exists() or cfg.ferplus_csv:
        new = Path(cfg.ferplus_csv) if cfg.ferplus_csv else root / "fer2013new.csv"
        if not fer_csv.exists():
            raise IngestError(f"{fer_csv} not found: FER+ votes join by row onto the original fer2013.csv")
        return _ferplus_from_csv(fer_csv, new, cfg)
    if (root / "ferplus.parquet").exists() or cfg.ferplus_parquet:
        fp = cfg.ferplus_parquet or str(root / "ferplus.parquet")
        return read_parquet(root, replace(cfg, ferplus_parquet=fp))
    raise IngestError(f"{root}: the ferplus layout needs fer2013.csv + fer2013new.csv, or *.parquet + "
                      "ferplus.parquet (or pass --ferplus-csv / --ferplus-parquet)")


def read_source(path: Path, layout: str, cfg: IngestConfig) -> Source:
    if cfg.ferplus_csv and layout not in ("fer2013-csv", "ferplus"):
        raise IngestError("--ferplus-csv joins by row onto fer2013.csv: use --layout fer2013-csv (or ferplus)")
    if cfg.ferplus_parquet and layout not in ("parquet", "ferplus"):
        raise IngestError("--ferplus-parquet joins onto the shared parquet: use --layout parquet")
    if layout == "imagefolder":
        return read_imagefolder(path, cfg, cfg.dataset if cfg.dataset in LABEL_SETS else "fer2013")
    readers = {
        "fer2013-folders": read_fer2013_folders,
        "fer2013-csv": read_fer2013_csv,
        "ferplus": read_ferplus,
        "ckplus": read_ckplus,
        "rafdb": lambda p, c: read_rafdb(p, c, compound=False),
        "rafdb-compound": lambda p, c: read_rafdb(p, c, compound=True),
        "dfew": read_dfew,
        "parquet": read_parquet,
    }
    if path.is_file() and layout not in ("fer2013-csv", "ferplus", "parquet"):
        raise IngestError(f"{path} is a file; the {layout} layout reads a folder")
    return readers[layout](path, cfg)


DATASET_OF = {"fer2013-folders": "fer2013", "fer2013-csv": "fer2013", "ferplus": "ferplus", "ckplus": "ckplus",
              "rafdb": "rafdb", "rafdb-compound": "rafdb-compound", "dfew": "dfew"}


# --------------------------------------------------------------------------- decoding

def _decode_one(rec: Record, max_pixels: int) -> dict | Reject:
    try:
        if rec.pixels is not None:
            arr = _pixels(rec.pixels) if isinstance(rec.pixels, str) else rec.pixels
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
    if not any(r["_split"] == "test" for r in rows) and test_fraction > 0:
        pool = list(range(len(rows)))
        mask, how = holdout([rows[i]["label"] for i in pool], [keyed[i][1] for i in pool], test_fraction, seed)
        for i, m in zip(pool, mask):
            rows[i]["_split"] = "test" if m else "train"
        info["test"] = {"carved_from": "all rows (the dataset has no test split)", "method": how,
                        "fraction": test_fraction}
    else:
        info["test"] = {"carved_from": "the dataset's own test split"}
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
        raise IngestError(f"{path} does not exist. Give a dataset folder or file; layouts: {', '.join(LAYOUTS)}")
    if not 0 <= cfg.val_fraction < 1 or not 0 <= cfg.test_fraction < 1:
        raise IngestError("--val-fraction and --test-fraction must be in [0, 1)")
    layout = detect_layout(path) if cfg.layout == "auto" else cfg.layout
    if layout not in LAYOUTS:
        raise IngestError(f"unknown layout {layout!r}; layouts: auto, {', '.join(LAYOUTS)}")
    if cfg.ferplus_csv and layout == "fer2013-csv":
        layout = "ferplus"
    dataset = cfg.dataset or DATASET_OF.get(layout) or _slug(path)
    src = read_source(path, layout, cfg)
    if not src.records:
        raise IngestError(f"{path}: no images found for layout {layout!r} "
                          f"({len(src.rejects)} rows rejected or dropped)")
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
        "command": "pipeline ingest", "source": str(path), "layout": layout, "dataset": dataset,
        "label_set": src.label_set.name, "config": {k: v for k, v in asdict(cfg).items() if k != "workers"},
        "splits": split_info, "rows": {s: t.num_rows for s, t in tables.items()},
        "rejects": sum(r.kind != "dropped" for r in rejects),
        "dropped": dict(Counter(r.reason for r in rejects if r.kind == "dropped")),
        "duplicates": dups,
    }
    return IngestResult(tables, src.label_set, layout, dataset, rejects, src.notes, dups, producer)


def _slug(path: Path) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.resolve().name.lower()).strip("-") or "dataset"


def _row(rec: Record, d: dict, dataset: str, ls: LabelSet) -> dict:
    row = {
        "sample_id": sample_id(dataset, rec.source_path), "dataset": dataset, "orig_split": rec.orig_split,
        "source_path": rec.source_path, "label": rec.label, "label_id": ls.index(rec.label),
        "label_set": ls.name, "subject": rec.subject, "sequence": rec.sequence, "clip_id": rec.clip_id,
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
    from features.manifest import check_writable, sweep_stale_tmp

    for p in split_paths(prefix).values():
        check_writable(p, "--out")
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
