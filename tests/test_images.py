"""The one decode (features.images): every storage variant of a photo gives the same pixels,
the same face box and the same label as the upright 8-bit original."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from features.images import BadImage, decode

sys.path.insert(0, str(Path(__file__).parent))
from test_predict import tiny_checkpoint  # noqa: E402

# the Image.transpose that stores an upright picture so that EXIF orientation k turns it back
STORE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
         5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
         8: Image.Transpose.ROTATE_270}


@pytest.fixture(scope="module")
def upright():
    from skimage.data import astronaut

    return np.asarray(Image.fromarray(astronaut()).convert("L").resize((256, 256)))


@pytest.fixture(scope="module")
def predictor(tmp_path_factory):
    import torch

    from train.api import EmotionPredictor

    torch.set_num_threads(1)
    d = tmp_path_factory.mktemp("run")
    tiny_checkpoint(d)
    return EmotionPredictor.from_checkpoint(d, detector="haar", fallback=False)


def _save(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _iou(a, b) -> float:
    from train.video import iou

    return iou(a, b)


def _box_and_label(predictor, arr):
    faces = predictor.predict(arr)
    assert faces, "no face found"
    return faces[0].box, faces[0].label


def _jpeg_with_orientation(upright: np.ndarray, k: int) -> bytes:
    im = Image.fromarray(upright)
    stored = im if k == 1 else im.transpose(STORE[k])
    exif = Image.Exif()
    exif[0x0112] = k
    return _save(stored, "JPEG", quality=100, exif=exif.tobytes())


@pytest.mark.parametrize("k", range(1, 9))
def test_exif_orientation_is_applied(upright, predictor, k):
    ref, _ = decode(_jpeg_with_orientation(upright, 1))
    arr, fmt = decode(_jpeg_with_orientation(upright, k))
    assert fmt == "jpeg" and arr.shape == upright.shape
    assert np.abs(arr.astype(int) - ref.astype(int)).mean() < 2.0  # JPEG blocks differ a little
    box0, label0 = _box_and_label(predictor, ref)
    box, label = _box_and_label(predictor, arr)
    assert _iou(box, box0) > 0.8 and label == label0


def test_sixteen_bit_png_is_scaled_not_clipped(upright, predictor):
    wide = Image.fromarray(upright.astype(np.uint16) * 257)  # the full 16-bit range, same picture
    assert wide.mode.startswith("I")
    arr, _ = decode(_save(wide, "PNG"))
    assert arr.dtype == np.uint8 and np.array_equal(arr, upright)
    assert _box_and_label(predictor, arr) == _box_and_label(predictor, upright)


def test_palette_gif_cmyk_la_and_alpha(upright, predictor):
    ref = _box_and_label(predictor, upright)
    pal = Image.fromarray(255 - upright, "L").convert("P")  # index i shows grey 255 - i: a real palette
    pal.putpalette([255 - i for i in range(256) for _ in range(3)])
    data = _save(pal, "GIF")
    assert Image.open(io.BytesIO(data)).mode == "P"
    gif, _ = decode(data)
    assert gif.ndim == 3 and np.array_equal(gif[..., 0], upright) and np.array_equal(gif[..., 2], upright)
    assert _box_and_label(predictor, gif) == ref
    rgb = np.repeat(upright[..., None], 3, axis=2)
    cmyk, _ = decode(_save(Image.fromarray(rgb).convert("CMYK"), "TIFF"))
    assert np.array_equal(cmyk, rgb) and _box_and_label(predictor, cmyk) == ref
    la = Image.merge("LA", (Image.fromarray(upright), Image.new("L", (256, 256), 255)))
    arr, _ = decode(_save(la, "PNG"))
    assert arr.ndim == 2 and np.array_equal(arr, upright) and _box_and_label(predictor, arr) == ref
    # transparent pixels are composited on white, not left as their (black) colour values
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:4, :, 3] = 255
    arr, _ = decode(_save(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert arr.shape == (8, 8, 3) and (arr[:4] == 0).all() and (arr[4:] == 255).all()


def test_pil_input_of_the_api_takes_the_same_path(upright):
    from train.api import load_image

    im = Image.open(io.BytesIO(_jpeg_with_orientation(upright, 6)))
    assert load_image(im).shape == upright.shape  # turned upright, as a file would be


def test_bomb_limit_truncated_and_empty_still_refused(upright):
    data = _save(Image.fromarray(upright), "JPEG")
    with pytest.raises(BadImage, match="too large"):
        decode(data, max_pixels=1000)
    with pytest.raises(BadImage, match="cannot decode"):
        decode(data[: len(data) // 2])
    with pytest.raises(BadImage, match="empty"):
        decode(b"")


def test_undecodable_bytes_are_named_without_an_object_address():
    """Every caller (ingest, predict, the API) gets a reason a person can read: PIL's
    '<_io.BytesIO object at 0x...>' is replaced where the decode happens."""
    import pytest

    from features.images import BadImage, decode

    with pytest.raises(BadImage) as e:
        decode(b"not an image")
    assert "object at 0x" not in str(e.value) and "not an image format Pillow reads" in str(e.value)

