"""Decode / encode / hash the image bytes a manifest carries."""

from __future__ import annotations

import hashlib
import io
import warnings

import numpy as np
from PIL import Image

# Pillow's decompression-bomb guard, made explicit: above this many pixels an image is refused.
MAX_PIXELS = 64_000_000


class BadImage(ValueError):
    """An image that cannot be used; the message is the reason shown in a rejects report."""


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Bytes -> (uint8 array HxW for grey or HxWx3 for colour, lower-case format name)."""
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            # Image.open warns before we get to check the size ourselves; we refuse it below
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))
        with im:
            if im.width * im.height > max_pixels:
                raise BadImage(f"too large: {im.width}x{im.height} exceeds {max_pixels} pixels")
            fmt = (im.format or "unknown").lower()
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                im.load()
            if im.mode in ("L", "I;16", "I", "F", "1"):
                arr = np.asarray(im.convert("L"))
            else:
                arr = np.asarray(im.convert("RGB"))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large (decompression-bomb limit): {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError for truncated data and UnidentifiedImageError (an OSError) for non-images
        raise BadImage(f"cannot decode: {e}") from None
    return arr, fmt


def encode(arr: np.ndarray, fmt: str = "png") -> bytes:
    """uint8 array -> encoded bytes (PNG by default: lossless, so pixel_hash survives)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(arr)).save(buf, format=fmt.upper())
    return buf.getvalue()


def pixel_hash(arr: np.ndarray) -> str:
    """SHA-1 of the decoded uint8 pixels (equal to PROVENANCE.md's pixel_sha1 for FER2013)."""
    return hashlib.sha1(np.ascontiguousarray(arr).tobytes()).hexdigest()


def channels(arr: np.ndarray) -> int:
    return 1 if arr.ndim == 2 else arr.shape[2]


def to_rgb(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def to_grey(arr: np.ndarray) -> np.ndarray:
    if arr.ndim == 2:
        return arr
    return np.asarray(Image.fromarray(arr).convert("L"))
