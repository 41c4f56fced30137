"""Decode / encode / hash the image bytes a manifest carries."""

from __future__ import annotations

import hashlib
import io
import re
import warnings

import numpy as np
from PIL import Image

# Pillow's decompression-bomb guard, made explicit: above this many pixels an image is refused.
MAX_PIXELS = 64_000_000

# File extensions read as still images by ingest and predict (lower case, with the dot).
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})


_ADDRESS = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _no_address(e: BaseException) -> str:
    """PIL names an in-memory file by its object address ('<_io.BytesIO object at 0x7f...>'):
    useless to a reader, so it becomes 'the image bytes' (callers name the file or row)."""
    text = re.sub(r"cannot identify image file <[^<>]* at 0x[0-9a-fA-F]+>", "not an image format Pillow reads", str(e))
    return _ADDRESS.sub("the image bytes", text)


class BadImage(ValueError):
    """An image that cannot be used; the message is the reason shown in a rejects report."""


def decode(data: bytes, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, str]:
    """Bytes -> (uint8 array HxW for grey or HxWx3 for colour, lower-case format name).

    The one decode every caller uses (ingest, faces, enhance, predict, the API); `to_array` says
    what it does to orientation, bit depth, palettes and alpha. Raises BadImage (empty, not an
    image, truncated, or over `max_pixels`: Pillow's decompression-bomb guard, made explicit).
    """
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
            arr = to_array(im)
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large (decompression-bomb limit): {_no_address(e)}") from None
    except (OSError, SyntaxError, ValueError) as e:
        # PIL raises OSError for truncated data and UnidentifiedImageError (an OSError) for non-images
        raise BadImage(f"cannot decode: {_no_address(e)}") from None
    return arr, fmt


def to_array(im: Image.Image) -> np.ndarray:
    """A PIL image in any mode -> uint8 array, HxW grey or HxWx3 RGB, upright.

    Every decode in affectlab (files, manifest bytes, API inputs) ends here, so a photo looks the
    same to every caller:

    * EXIF orientation is applied (`PIL.ImageOps.exif_transpose`): a phone photo stored sideways
      with Orientation 6 is turned upright before any detector sees it.
    * 16-bit and 32-bit grey (modes I;16*, I, F) are scaled to 8 bits by the value range the mode
      can hold (0-65535 for 16-bit, 0-255 when an I/F image holds only 8-bit values); Pillow's own
      ``convert("L")`` clips them, which turned a 16-bit PNG almost white.
    * Palette images become RGB; alpha (RGBA, LA, PA, palette
      transparency) is composited on white, so transparent pixels do not become black shapes.
    * CMYK, YCbCr, LAB, HSV become RGB through Pillow's converters; 1-bit becomes L.
    """
    from PIL import ImageOps

    im = ImageOps.exif_transpose(im)  # returns a copy (or the image itself when upright)
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        # I and F say nothing of their bit depth: 8-bit values stay as they are, larger are 16-bit
        top = 65535.0 if mode.startswith("I;16") or (a.size and a.max() > 255) else 255.0
        return np.clip(np.round(a * (255.0 / top)), 0, 255).astype(np.uint8)
    if mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        mode = im.mode
    if mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, rgba).convert("L" if mode in ("LA", "La") else "RGB")
        mode = im.mode
    if mode in ("L", "1"):
        return np.asarray(im.convert("L"))
    return np.asarray(im.convert("RGB"))


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
