"""Find model weights locally: an explicit path, or a hub id already in the HF cache.

affectlab never downloads inside a stage's constructor. A user who has network can fetch a
model once (`huggingface-cli download ID`), or put the files in a folder and pass its path;
with neither, the error says exactly which file or id to put where.
"""

from __future__ import annotations

import os
from pathlib import Path


class WeightsNotFound(FileNotFoundError):
    pass


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    return home / "hub"


def resolve(spec: str, what: str, files: tuple[str, ...] = ("config.json",)) -> Path:
    """`spec` is a local file/dir or an HF id ('Salesforce/blip-image-captioning-base').

    Returns a local path (a file, or a directory holding `files`). Looks in the HF cache for
    ids; never touches the network.
    """
    p = Path(spec).expanduser()
    if p.exists():
        if p.is_dir():
            missing = [f for f in files if not (p / f).exists()]
            if missing:
                raise WeightsNotFound(f"{what}: folder {p} lacks {missing}; it should be a "
                                      "`save_pretrained` folder or a hub snapshot")
        return p
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        snap = _cached_snapshot(spec, files)
        if snap is not None:
            return snap
        raise WeightsNotFound(
            f"{what}: {spec!r} is not in the Hugging Face cache ({hf_cache_dir()}) and this run is "
            f"offline. On a machine with network run `huggingface-cli download {spec}` (then copy "
            f"{hf_cache_dir()} here), or download the files {list(files)} into a folder and pass "
            "its path instead of the id.")
    raise WeightsNotFound(f"{what}: no file or folder at {p}. Put the checkpoint there, or pass "
                          "the path where it is.")


def _cached_snapshot(repo_id: str, files: tuple[str, ...]) -> Path | None:
    root = hf_cache_dir() / ("models--" + repo_id.replace("/", "--")) / "snapshots"
    if not root.is_dir():
        return None
    for snap in sorted(root.iterdir(), key=lambda s: s.stat().st_mtime, reverse=True):
        if all((snap / f).exists() for f in files):
            return snap
    return None
