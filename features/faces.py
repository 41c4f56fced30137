"""Face detection, crop and eye alignment, shared by `pipeline faces` and `train predict`.

Three backends:

* ``mtcnn`` (offline, with five landmarks): facenet-pytorch's MTCNN (Zhang et al. 2016, "Joint
  Face Detection and Alignment using Multi-task Cascaded Convolutional Networks"; MIT-licensed
  port of the authors' Caffe weights). Its P-, R- and O-net state dicts (1.9 MB) ship inside the
  wheel (``facenet_pytorch/data/*.pt``), so nothing is downloaded. Install it with ``pip install
  --no-deps facenet-pytorch==2.6.0`` (``make setup``): its metadata pins an old torch. The
  package's own nets call ``torch.load`` without ``weights_only``, so affectlab builds them with
  ``pretrained=False`` and loads the same files itself with ``torch.load(weights_only=True)``,
  then runs the package's ``detect_face`` (batched over images of one size).
* ``haar`` (the no-extra fallback, offline): OpenCV's frontal-face Haar cascade, shipped inside the
  opencv-python(-headless) 4.x wheel (`cv2.data.haarcascades`; OpenCV 5.0 moved the cascades out
  of the main wheel, which is why affectlab pins opencv 4.14). The eye cascade, run inside the
  upper half of each face, gives two eye centres for alignment when it finds them.
* ``retinaface``: facexlib's RetinaFace (ResNet-50 or MobileNet-0.25) with 5 landmarks. facexlib
  downloads its weights on first use, so affectlab never lets it: the weights must already be in
  ``weights_dir`` (``detection_Resnet50_Final.pth`` or ``detection_mobilenet0.25_Final.pth``), and
  they are read with ``torch.load(weights_only=True)``. Install facexlib with
  ``pip install --no-deps facexlib==0.3.0`` (``make setup-faces``): its metadata asks for
  opencv-python, which would clash with opencv-python-headless.

Images are uint8 arrays: HxW grey or HxWx3 RGB (the order features.images.decode gives).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from features.hub import WeightsNotFound

BACKENDS = ("mtcnn", "haar", "retinaface")
MTCNN_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
MTCNN_INSTALL = "pip install --no-deps facenet-pytorch==2.6.0 (make setup)"
RETINAFACE_FILES = {
    "resnet50": "detection_Resnet50_Final.pth",
    "mobile0.25": "detection_mobilenet0.25_Final.pth",
}


class FaceError(ValueError):
    """A face backend that cannot run as asked; the message says what to install or where to put what."""


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in the source image
    score: float  # detector confidence; 1.0 for Haar, which gives none
    landmarks: np.ndarray | None = None  # (k, 2) float32 x, y; the first two are the eyes

    @property
    def area(self) -> int:
        return self.box[2] * self.box[3]


# --------------------------------------------------------------------------- Haar


@lru_cache(maxsize=4)
def _cascade(name: str):
    import cv2

    path = Path(cv2.data.haarcascades) / name
    clf = cv2.CascadeClassifier(str(path)) if path.exists() else None
    if clf is None or clf.empty():
        raise FaceError(
            f"OpenCV's Haar cascade {name} is not in {cv2.data.haarcascades} (OpenCV {cv2.__version__}). "
            "affectlab pins opencv-python-headless 4.14, whose wheel ships the cascades; re-run `make setup`.")
    return clf


def _grey(img: np.ndarray) -> np.ndarray:
    import cv2

    return img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _haar_eyes(grey: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray | None:
    """Two eye centres from the eye cascade inside the face's upper half, or None."""
    x, y, w, h = box
    roi = grey[y:y + h // 2 + h // 8, x:x + w]
    if roi.size == 0:
        return None
    eyes = _cascade("haarcascade_eye.xml").detectMultiScale(roi, 1.1, 5, minSize=(max(4, w // 10),) * 2)
    left = [e for e in eyes if e[0] + e[2] / 2 < w / 2]
    right = [e for e in eyes if e[0] + e[2] / 2 >= w / 2]
    if not left or not right:
        return None
    pick = [max(left, key=lambda e: e[2] * e[3]), max(right, key=lambda e: e[2] * e[3])]
    return np.array([[x + ex + ew / 2, y + ey + eh / 2] for ex, ey, ew, eh in pick], np.float32)


def _detect_haar(img: np.ndarray, min_size: int, eyes: bool) -> list[Face]:
    grey = _grey(img)
    boxes = _cascade("haarcascade_frontalface_default.xml").detectMultiScale(
        grey, scaleFactor=1.1, minNeighbors=5, minSize=(min_size, min_size))
    faces = []
    for b in boxes:
        box = tuple(int(v) for v in b)
        faces.append(Face(box, 1.0, _haar_eyes(grey, box) if eyes else None))
    return faces


# --------------------------------------------------------------------------- MTCNN


def mtcnn_available() -> bool:
    """True when facenet-pytorch is installed (its weights may still be missing or corrupt)."""
    import importlib.util

    return importlib.util.find_spec("facenet_pytorch") is not None


def auto_backend() -> tuple[str, str]:
    """What the `auto` detector of `train predict` and `pipeline faces` is here: ("mtcnn", "") when
    facenet-pytorch is installed, else ("haar", a one-line notice saying how to get MTCNN)."""
    if mtcnn_available():
        return "mtcnn", ""
    return "haar", (f"facenet-pytorch is not installed, so faces are found with OpenCV's Haar cascade (fewer "
                    f"faces found); {MTCNN_INSTALL} for the MTCNN detector")


@lru_cache(maxsize=2)
def load_mtcnn(device: str = "cpu"):
    """(pnet, rnet, onet) from facenet-pytorch's wheel, read with torch.load(weights_only=True).

    Raises FaceError (one line) when the package is absent or a weights file is missing or corrupt.
    """
    try:
        from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
    except ImportError as e:
        raise FaceError(f"--detector mtcnn needs facenet-pytorch ({e}); install it with {MTCNN_INSTALL}, "
                        "or use --detector haar") from None
    import facenet_pytorch
    import torch

    data = Path(facenet_pytorch.__file__).parent / "data"
    nets = []
    for cls, fname in zip((PNet, RNet, ONet), MTCNN_FILES):
        path = data / fname
        net = cls(pretrained=False)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            net.load_state_dict(state, strict=True)
        except FileNotFoundError:
            raise FaceError(f"MTCNN weights {path} are missing; reinstall with {MTCNN_INSTALL}") from None
        except Exception as e:  # unpickling / zip / shape errors all mean the same to a user
            raise FaceError(f"MTCNN weights {path} cannot be read ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''}); reinstall with {MTCNN_INSTALL}") from None
        nets.append(net.eval().to(device))
    return tuple(nets)


# P-net / R-net / O-net score thresholds, as facenet-pytorch (after Zhang et al.) defaults them.
MTCNN_THRESHOLDS = (0.6, 0.7, 0.7)
# A second pass with lower P-net / R-net / O-net thresholds runs on the images where the first
# found no face: it finds faces cut tight or turned, which the defaults reject, without adding the
# false faces that lower thresholds give photos that already have one (on skimage's astronaut,
# lower thresholds everywhere add a 27x35 px "face" on her suit, O-net score 0.83). Chosen with
# `make bench-photos` (docs/results/photos/photos.md, 2026-12-05, 2-core CPU).
MTCNN_RETRY_THRESHOLDS = (0.3, 0.4, 0.5)
# A third pass, at the second pass's thresholds, runs on the images still without a face after it,
# on a contrast-equalised copy (CLAHE on the grey image, clip 2.0, 8x8 tiles; OpenCV): it finds
# faces lit flat or low in contrast. On 1,000 FER2013 validation faces pasted into canvases (the
# canvas round trip of `make bench-photos`, training-split faces) it found 18 of the 38 faces the
# first two passes missed, 15 of them on the pasted face (IoU > 0.4), where a 2x upscale found 11
# and a global histogram equalisation 10. None: no third pass.
MTCNN_CLAHE_PASS: tuple[float, int] | None = (2.0, 8)
# Zhang et al.'s image-pyramid factor, as facenet-pytorch defaults it
MTCNN_FACTOR = 0.709
# MTCNN's cost grows with the pixels it scans: larger photos are searched at this longer side
# (boxes and landmarks are scaled back to source pixels), which bounds the time per photo
MTCNN_MAX_SIDE = 640


def _detect_mtcnn(imgs: list[np.ndarray], min_size: int, threshold: float | None, device: str) -> list[list[Face]]:
    """Faces of several images; images of one size run through the cascade as one batch, then the
    images without a face once more at MTCNN_RETRY_THRESHOLDS, then those still without one on a
    contrast-equalised copy (MTCNN_CLAHE_PASS)."""
    import cv2

    load_mtcnn(device)  # fails here, once, when the package or its weights are missing
    rgb, scales = [], []
    for im in imgs:
        im = np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im
        scale = min(1.0, MTCNN_MAX_SIDE / max(im.shape[:2]))
        if scale < 1.0:
            im = cv2.resize(im, (max(1, round(im.shape[1] * scale)), max(1, round(im.shape[0] * scale))),
                            interpolation=cv2.INTER_AREA)
        rgb.append(im)
        scales.append(scale)
    out: list[list[Face]] = [[] for _ in imgs]
    first = list(MTCNN_THRESHOLDS[:2]) + [MTCNN_THRESHOLDS[2] if threshold is None else threshold]
    _mtcnn_pass(imgs, rgb, scales, range(len(imgs)), first, min_size, device, out)
    if MTCNN_RETRY_THRESHOLDS is not None:
        retry = list(MTCNN_RETRY_THRESHOLDS[:2]) + [min(MTCNN_RETRY_THRESHOLDS[2], first[2])]
        _mtcnn_pass(imgs, rgb, scales, [i for i, f in enumerate(out) if not f], retry, min_size, device, out)
        left = [i for i, f in enumerate(out) if not f]
        if MTCNN_CLAHE_PASS is not None and left:
            clahe = cv2.createCLAHE(clipLimit=MTCNN_CLAHE_PASS[0], tileGridSize=(MTCNN_CLAHE_PASS[1],) * 2)
            flat = list(rgb)
            for i in left:
                flat[i] = np.repeat(clahe.apply(cv2.cvtColor(rgb[i], cv2.COLOR_RGB2GRAY))[..., None], 3, axis=2)
            _mtcnn_pass(imgs, flat, scales, left, retry, min_size, device, out)
    return out


def _mtcnn_pass(imgs, rgb, scales, which, thresholds: list[float], min_size: int, device: str,
                out: list[list[Face]]) -> None:
    """One MTCNN cascade over the images `which` (equal sizes batched), faces appended to `out`."""
    import torch
    from facenet_pytorch.models.utils.detect_face import detect_face

    pnet, rnet, onet = load_mtcnn(device)
    groups: dict[tuple, list[int]] = {}
    for i in which:
        groups.setdefault((rgb[i].shape, scales[i]), []).append(i)
    for (shape, scale), idx in groups.items():
        search = max(12.0, min_size * scale)  # P-net's window is 12 px
        if min(shape[:2]) < search:  # no face of the asked size fits (and detect_face would fail)
            continue
        with torch.inference_mode():
            boxes, points = detect_face(np.stack([rgb[i] for i in idx]), search, pnet, rnet, onet,
                                        thresholds, MTCNN_FACTOR, torch.device(device))
        h_img, w_img = imgs[idx[0]].shape[:2]
        for i, bx, pt in zip(idx, boxes, points):
            bx = np.asarray(bx, np.float64).reshape(-1, 5) * np.array([1 / scale] * 4 + [1.0])
            pt = np.asarray(pt, np.float32).reshape(-1, 5, 2) / scale
            for b, p in zip(bx, pt):
                x1, y1 = max(0.0, b[0]), max(0.0, b[1])
                x2, y2 = min(float(w_img), b[2]), min(float(h_img), b[3])
                w, h = int(round(x2 - x1)), int(round(y2 - y1))
                if w < min_size or h < min_size:
                    continue
                out[i].append(Face((int(round(x1)), int(round(y1)), w, h), float(b[4]), p))


# --------------------------------------------------------------------------- RetinaFace


def retinaface_weights(weights_dir: str | Path | None, network: str = "resnet50") -> Path:
    """The local RetinaFace checkpoint, or a clear error naming the file and where it goes."""
    if network not in RETINAFACE_FILES:
        raise FaceError(f"RetinaFace network {network!r}: expected one of {sorted(RETINAFACE_FILES)}")
    fname = RETINAFACE_FILES[network]
    where = "--weights-dir DIR" if weights_dir is None else str(weights_dir)
    if weights_dir is not None:
        p = Path(weights_dir).expanduser()
        if p.is_file():
            return p
        if (p / fname).is_file():
            return p / fname
    raise WeightsNotFound(
        f"retinaface: needs {fname} in {where}. affectlab never downloads it: get it from the facexlib "
        f"project's v0.1.0 release assets on a machine with network, put it in a folder and pass "
        f"--weights-dir FOLDER (or use the haar detector: `--detector haar` in train predict, "
        f"`--backend haar` in pipeline faces; it needs no download).")


def _network_of(path: Path) -> str:
    return "mobile0.25" if "mobilenet" in path.name.lower() else "resnet50"


@lru_cache(maxsize=2)
def load_retinaface(weights_path: str, device: str = "cpu"):
    """facexlib's RetinaFace with the local weights (never its downloader)."""
    try:
        from facexlib.detection.retinaface import RetinaFace
    except ImportError as e:
        raise FaceError(
            f"--backend retinaface needs facexlib ({e}); install it with `pip install --no-deps "
            "facexlib==0.3.0` (`make setup-faces`): --no-deps because its metadata asks for opencv-python, "
            "which clashes with opencv-python-headless.") from None
    import torch

    path = Path(weights_path)
    model = RetinaFace(network_name=_network_of(path), half=False, device=torch.device(device))
    from features.weights import load_state_dict

    state = load_state_dict(path, "RetinaFace detector", f"facexlib's {RETINAFACE_FILES[_network_of(path)]}",
                            key="state_dict")
    # the official file was saved from a DataParallel model: keys may start with 'module.'
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise FaceError(f"{path} is not a facexlib RetinaFace {_network_of(path)} checkpoint: "
                        f"{str(e).splitlines()[0]}") from None
    return model.eval()


def _detect_retinaface(img: np.ndarray, weights_dir, min_size: int, threshold: float, device: str) -> list[Face]:
    import torch

    model = load_retinaface(str(retinaface_weights(weights_dir)), device)
    rgb = np.repeat(img[..., None], 3, axis=2) if img.ndim == 2 else img
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # facexlib takes OpenCV's BGR order
    with torch.inference_mode():
        dets = model.detect_faces(bgr, conf_threshold=threshold)
    faces = []
    h_img, w_img = img.shape[:2]
    for d in np.asarray(dets).reshape(-1, 15):
        x1, y1 = max(0.0, float(d[0])), max(0.0, float(d[1]))
        x2, y2 = min(float(w_img), float(d[2])), min(float(h_img), float(d[3]))
        w, h = int(round(x2 - x1)), int(round(y2 - y1))
        if w < min_size or h < min_size:
            continue
        lm = np.asarray(d[5:15], np.float32).reshape(5, 2)  # eyes, nose, mouth corners
        faces.append(Face((int(round(x1)), int(round(y1)), w, h), float(d[4]), lm))
    return faces


# --------------------------------------------------------------------------- public API


def detect_faces(
    img: np.ndarray,
    backend: str = "haar",
    weights_dir: str | Path | None = None,
    min_size: int = 20,
    threshold: float | None = None,
    eyes: bool = True,
    device: str = "cpu",
) -> list[Face]:
    """Faces in `img` (uint8 HxW or HxWx3 RGB), largest first.

    `threshold` is the score cut of RetinaFace (None: 0.8) and of MTCNN's last stage (None: its
    MTCNN_THRESHOLDS); Haar ignores it. Boxes are x, y, w, h in source pixels; MTCNN and RetinaFace give 5
    landmarks (eyes, nose, mouth corners), Haar at most the two eyes. Raises FaceError.
    """
    return detect_faces_batch([img], backend, weights_dir, min_size, threshold, eyes, device)[0]


def detect_faces_batch(
    imgs: list[np.ndarray],
    backend: str = "haar",
    weights_dir: str | Path | None = None,
    min_size: int = 20,
    threshold: float | None = None,
    eyes: bool = True,
    device: str = "cpu",
) -> list[list[Face]]:
    """`detect_faces` for several images at once (MTCNN batches images of equal size)."""
    for img in imgs:
        if img.ndim not in (2, 3) or img.dtype != np.uint8:
            raise FaceError(f"detect_faces wants a uint8 HxW or HxWx3 image, got {img.dtype} {img.shape}")
    if backend == "haar":
        found = [_detect_haar(img, min_size, eyes) for img in imgs]
    elif backend == "mtcnn":
        found = _detect_mtcnn(list(imgs), min_size, threshold, device)
    elif backend == "retinaface":
        found = [_detect_retinaface(img, weights_dir, min_size, 0.8 if threshold is None else threshold, device)
                 for img in imgs]
    else:
        raise FaceError(f"face backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    # largest first; ties by position so the order never depends on the detector's internals
    return [sorted(faces, key=lambda f: (-f.area, f.box[1], f.box[0])) for faces in found]


def eye_angle(face: Face) -> float:
    """Degrees the eye line is tilted from horizontal (0 when no eye landmarks)."""
    if face.landmarks is None or len(face.landmarks) < 2:
        return 0.0
    a, b = sorted(face.landmarks[:2].tolist())  # image-left eye first
    return math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))


# Where FER2013's 48x48 framing puts the five MTCNN landmarks, as fractions of the crop side
# (x, y): eyes, nose tip, mouth corners. Measured with benchmarks/bench_photos.py's recipe: MTCNN
# on 1,500 FER2013 *train* faces (seed 0, upscaled 4x with a replicated border; 89 % found),
# median positions, then made left-right symmetric. A crop that puts a photo's landmarks here
# frames the face as the classifier saw faces in training.
FER_TEMPLATE = np.array([[0.313, 0.388], [0.687, 0.388], [0.5, 0.604], [0.345, 0.785], [0.655, 0.785]],
                        np.float32)


def crop_matrix(face: Face, pad: float = 0.25, size: int | None = None, align: bool = True,
                template: np.ndarray | None = FER_TEMPLATE) -> tuple[np.ndarray, int]:
    """The 2x3 affine map from source pixels to a square crop, and its side in pixels.

    With five landmarks (MTCNN, RetinaFace), `align` and a `template`: the similarity transform
    (rotation, uniform scale, shift; least squares, cv2.estimateAffinePartial2D) that moves the
    landmarks onto `template` (fractions of the side), shrunk by `pad` on every side, so pad 0
    frames the face like a FER2013 crop. Otherwise: the box, squared on its longer side and grown
    by `pad` on every side, rotated about its centre so the eyes (when known) are level.
    """
    import cv2

    x, y, w, h = face.box
    cx, cy = x + w / 2, y + h / 2
    side = max(w, h) * (1 + 2 * pad)
    out = int(size) if size else max(1, int(round(side)))
    lm = face.landmarks
    if align and template is not None and lm is not None and len(lm) == len(template):
        dst = (np.asarray(template, np.float32) - 0.5) * (out / (1 + 2 * pad)) + out / 2
        m, _ = cv2.estimateAffinePartial2D(np.asarray(lm, np.float32), dst, method=cv2.LMEDS)
        if m is not None:
            return m, out
    angle = eye_angle(face) if align else 0.0
    # rotate about the face centre so the eyes are level, scale the padded box to `out`,
    # then move the face centre to the crop centre: one warp, no second resampling
    m = cv2.getRotationMatrix2D((cx, cy), angle, out / side)
    m[0, 2] += out / 2 - cx
    m[1, 2] += out / 2 - cy
    return m, out


def crop_face(img: np.ndarray, face: Face, pad: float = 0.25, size: int | None = None,
              align: bool = True, template: np.ndarray | None = FER_TEMPLATE) -> np.ndarray:
    """Square crop of `face` (see crop_matrix: landmarks onto `template` when there are five,
    else the padded box with the eyes levelled when known).

    Parts of the crop outside the image repeat the border pixels (a black frame would be a
    feature a classifier could learn). Grey stays grey, RGB stays RGB.
    """
    import cv2

    if pad <= -0.5:  # 1 + 2 * pad is the crop's side over the face's: it must stay positive
        raise FaceError(f"pad must be > -0.5 (negative zooms in), got {pad}")
    m, out = crop_matrix(face, pad, size, align, template)
    return cv2.warpAffine(img, m, (out, out), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
