"""What every layout reader shares: the ingest options, what a reader hands the stage (records,
rejects, notes), and the label and folder helpers.

Kept light on purpose: `pipeline --help` imports every layout (the `--layout` help lists them),
so numpy, Pillow and pyarrow are imported inside the functions that need them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from features.labels import LABEL_SETS, LabelSet, custom_label_set, get_label_set

if TYPE_CHECKING:
    import numpy as np

# Folder names a dataset uses for its splits -> the split they feed. Val folders join the
# training pool: validation is always carved from it.
SPLIT_DIRS = {"train": "train", "training": "train", "val": "train", "valid": "train",
              "validation": "train", "test": "test", "testing": "test"}

# Options that join a second file onto a layout's rows -> the error when the layout does not
# take it (a layout lists the ones it takes in `register_layout(joins=...)`).
JOIN_OPTIONS = {
    "ferplus_csv": "--ferplus-csv joins by row onto fer2013.csv: use --layout fer2013-csv (or ferplus)",
    "ferplus_parquet": "--ferplus-parquet joins onto the shared parquet: use --layout parquet",
}


class IngestError(ValueError):
    """Input that cannot be ingested as given; the message says what is wrong and what to do."""


def default_max_pixels() -> int:
    from features.images import MAX_PIXELS  # numpy + Pillow: not at `pipeline --help` time

    return MAX_PIXELS


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
    max_pixels: int = field(default_factory=default_max_pixels)  # features.images.MAX_PIXELS
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


# --------------------------------------------------------------------------- labels

def resolve_label_set(cfg: IngestConfig, default: str) -> LabelSet:
    """--labels, else --label-set, else the layout's `default`; IngestError naming the options."""
    if cfg.labels:
        names = tuple(n.strip() for n in cfg.labels if n.strip())
        if not names:
            raise IngestError("--labels is empty; give class names separated by commas, e.g. --labels a,b,c")
        return custom_label_set(names, name=cfg.label_set or "custom")
    try:
        return get_label_set(cfg.label_set or default)
    except KeyError as e:
        raise IngestError(f"{e.args[0]}; or pass your own classes with --labels a,b,c") from None


def match_label(name: str, label_set: LabelSet) -> str | None:
    """A folder / file label -> the label set's spelling: exact, then case-insensitive, then by
    canonical emotion (CK+ 'anger' lands on FER2013 'angry')."""
    if name in label_set.names:
        return name
    low = name.lower()
    for n in label_set.names:
        if n.lower() == low:
            return n
    probe = LabelSet("_probe", (name,))
    canon = probe.canonical[0]
    if canon is not None and canon in label_set.canonical:
        return label_set.names[label_set.canonical.index(canon)]
    return None


def label_map(found: Iterable[str], label_set: LabelSet, what: str) -> dict[str, str]:
    """Every label a dataset uses -> the label set's name; IngestError listing the unknown ones,
    the known ones and the `--labels` that would take them."""
    out, unknown = {}, []
    for name in sorted(set(found)):
        m = match_label(name, label_set)
        if m is None:
            unknown.append(name)
        out[name] = m
    if unknown:
        raise IngestError(
            f"unknown {what} {', '.join(map(repr, unknown))} for label set {label_set.name!r} "
            f"(known: {', '.join(label_set.names)}). Pass --label-set NAME (one of {', '.join(sorted(LABEL_SETS))}) "
            f"or your own classes with --labels {','.join(sorted(set(found)))}")
    return out


def id_label(i: int, label_set: LabelSet, base: int, where: str) -> str:
    """A numeric label id (`base` = the dataset's first id) -> its name; IngestError out of range."""
    k = i - base
    if not 0 <= k < len(label_set):
        raise IngestError(
            f"{where}: label id {i} is outside {base}..{base + len(label_set) - 1} of label set "
            f"{label_set.name!r} ({', '.join(label_set.names)}); pass --labels with the dataset's class list in id order")
    return label_set.names[k]


# --------------------------------------------------------------------------- folders

def has_image_suffix(p: Path) -> bool:
    from features.images import IMAGE_EXTS  # see default_max_pixels

    return p.suffix.lower() in IMAGE_EXTS


def is_image(p: Path) -> bool:
    return p.is_file() and has_image_suffix(p)


def subdirs(p: Path) -> list[Path]:
    return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith("."))


def relative(p: Path, root: Path) -> str:
    """`p` relative to the ingest root, as `source_path` stores it (so ids do not depend on where
    the dataset sits)."""
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        return p.as_posix()
