"""Layouts by name: each module in pipeline/layouts/ registers the layouts it reads with
`register_layout`, and `pipeline ingest` (its `--layout` help, `--layout auto`, its error lines)
knows only what is registered here.

A layout is a reader `read(path, cfg) -> Source` plus what the stage needs to know about it: the
dataset key its rows get, and a detection rule `detect(path) -> bool` that `--layout auto` tries
in `detect_order` (lowest first; the first rule that holds wins). Like torchvision's
`register_model`, a duplicate name is refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pipeline.layouts.base import JOIN_OPTIONS, IngestConfig, IngestError, Source

Reader = Callable[[Path, IngestConfig], Source]
Detect = Callable[[Path], bool]

# Where the built-in rules sit, so a new rule can go between them: 10-40 look for a dataset's own
# files (RAF-DB, DFEW, FER+, fer2013.csv), 60 is any parquet with images, 70-90 read class
# folders, the catch-all `imagefolder` last. The default, 50, is "a dataset's own files".
DEFAULT_DETECT_ORDER = 50


@dataclass(frozen=True)
class Layout:
    name: str
    read: Reader
    dataset: str | None  # the `dataset` key rows get without --dataset; None: the folder's name
    detect: Detect | None = None  # None: only ever chosen with --layout NAME
    detect_order: int = DEFAULT_DETECT_ORDER
    reads_files: bool = False  # PATH may be a file (fer2013.csv, a .parquet), not only a folder
    joins: tuple[str, ...] = ()  # the JOIN_OPTIONS it takes (e.g. ferplus_parquet)
    becomes: dict[str, str] = field(default_factory=dict)  # option -> layout that reads PATH when it is set


_LAYOUTS: dict[str, Layout] = {}


def register_layout(name: str, *, dataset: str | None, detect: Detect | None = None,
                    detect_order: int = DEFAULT_DETECT_ORDER, reads_files: bool = False,
                    joins: tuple[str, ...] = (), becomes: dict[str, str] | None = None
                    ) -> Callable[[Reader], Reader]:
    """Decorator for a reader `read(path: Path, cfg: IngestConfig) -> Source`; returns it unchanged.

    `detect(path)` gets the existing PATH (a folder or a file) and says whether it is this layout;
    it may raise IngestError to stop `--layout auto` with a message. ValueError on a duplicate or
    reserved name, or an option `pipeline ingest` does not have."""
    if name == "auto" or not name:
        raise ValueError(f"{name!r} cannot name a layout (`--layout auto` detects one)")
    unknown = sorted((set(joins) | set(becomes or {})) - set(JOIN_OPTIONS))
    if unknown:
        raise ValueError(f"layout {name!r}: no such join option(s) {unknown}; known: {', '.join(JOIN_OPTIONS)}")

    def deco(read: Reader) -> Reader:
        if name in _LAYOUTS:
            raise ValueError(f"a layout named {name!r} is already registered")
        _LAYOUTS[name] = Layout(name, read, dataset, detect, detect_order, reads_files, tuple(joins),
                                dict(becomes or {}))
        return read

    return deco


def unregister_layout(name: str) -> Layout:
    """Remove a layout (a test or a notebook that registered one for a while); KeyError if absent."""
    return _LAYOUTS.pop(name)


def list_layouts() -> list[str]:
    """Registered names, in registration order: the order `--help` and error lines list them."""
    return list(_LAYOUTS)


def get_layout(name: str) -> Layout:
    try:
        return _LAYOUTS[name]
    except KeyError:
        raise IngestError(f"unknown layout {name!r}; layouts: auto, {', '.join(_LAYOUTS)}") from None


def detect_layout(path: Path) -> str:
    """Guess the layout from the tree: the first registered rule, by `detect_order`, that holds.
    IngestError listing the layouts when PATH is missing or no rule fits."""
    if not path.exists():
        raise not_found(path)
    rules = sorted((layout for layout in _LAYOUTS.values() if layout.detect), key=lambda x: x.detect_order)
    for layout in rules:  # sorted() is stable: equal orders keep registration order
        if layout.detect(path):
            return layout.name
    raise unrecognised(path)


def not_found(path: Path) -> IngestError:
    return IngestError(f"{path} does not exist. Give a dataset folder or file; layouts: {', '.join(_LAYOUTS)}")


def unrecognised(path: Path) -> IngestError:
    return IngestError(
        f"cannot tell the layout of {path}. Pass --layout, one of: {', '.join(_LAYOUTS)} "
        "(see docs/ingest.md for what each expects)")
