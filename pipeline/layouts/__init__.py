"""Dataset layouts for `pipeline ingest`, one module each, registered by name (registry.py).

Importing this package imports every module in it, so a new layout is one new file here: its
module registers it with `@register_layout`, and `--layout NAME`, `--layout auto`, the `--layout`
help and the error lines that list layouts all pick it up (docs/ingest.md, "Adding a layout").
A layout module imports base, folders, fer_files and the registry, never another layout module:
the registry then lists layouts in the order below, whatever imports what.
"""

from __future__ import annotations

import importlib
import pkgutil

from pipeline.layouts.registry import (
    Layout,
    detect_layout,
    get_layout,
    list_layouts,
    register_layout,
    unregister_layout,
)

__all__ = ["Layout", "detect_layout", "get_layout", "list_layouts", "register_layout", "unregister_layout"]

# The order `--help` and error lines list the built-in layouts in (the order of their
# registration); modules not named here are imported after these, by name.
LISTED_FIRST = ("fer2013_folders", "fer2013_csv", "ferplus", "ckplus", "rafdb", "dfew", "imagefolder", "parquet")



def _import_all() -> None:
    for name in (*LISTED_FIRST, *sorted(m.name for m in pkgutil.iter_modules(__path__))):
        importlib.import_module(f"{__name__}.{name}")  # a no-op for a module already imported


_import_all()
