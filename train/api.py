"""The Python API: load a checkpoint once, then ask for the emotions of the faces in images.

    from train.api import EmotionPredictor
    p = EmotionPredictor.from_checkpoint("runs/vgg/best.safetensors")
    for face in p.predict("photo.jpg"):
        print(face.label, face.prob, face.box, face.topk)

The CMAEN seed's `EmotionPredictor` idea (load once; predict / predict_batch), with the
checkpoint's own preprocessing read from its sidecar and face detection in front. Results are
plain frozen dataclasses, so they print, compare and serialise (`dataclasses.asdict`) as data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from train.checkpoint import DEFAULT_MODEL, WEIGHTS_DIR  # noqa: F401 - the API names the shipped model

DETECTORS = ("auto", "mtcnn", "haar", "retinaface", "none")
TTA_MODES = ("none", "flip")  # test-time augmentation of each face crop
# "auto": MTCNN when facenet-pytorch is installed (docs/predict.md has the wild_dev figures that
# chose it), else Haar with a one-line notice. Per-detector crop margin (fraction of the box on
# each side) tuned so a crop frames the face as FER2013 does (docs/predict.md, bench-photos):
PADS = {"mtcnn": 0.0, "haar": 0.1, "retinaface": 0.0}
# How a detected face is cut out: "box" = the detector's box plus `pad`, eyes levelled; "landmarks"
# = the five landmarks mapped onto FER2013's mean face (features.faces.FER_TEMPLATE). On wild_dev
# and on the canvas round trip the box crop scored higher (make bench-photos, docs/results/photos).
CROPS = ("box", "landmarks")
FACE_SOURCES = ("detector", "whole_image")


class PredictError(ValueError):
    """Input or checkpoint that cannot be used; the message says what is wrong and what to do."""


@dataclass(frozen=True)
class FacePrediction:
    label: str
    prob: float
    box: tuple[int, int, int, int]  # x, y, w, h in the source image (the central square: detector "none", fallback)
    topk: tuple[tuple[str, float], ...]
    face_score: float | None = None  # detector confidence (Haar has none: 1.0), None without a detector
    logits: tuple[float, ...] = field(default=(), repr=False)  # raw, for temporal smoothing and ensembles
    face_source: str = "detector"  # detector | whole_image (the central square: no face found, or detector "none")


@dataclass(frozen=True)
class Face:
    """A face found in an image, with the crop the model sees (before its preprocessing)."""

    box: tuple[int, int, int, int]
    score: float | None
    crop: np.ndarray = field(repr=False)
    source: str = "detector"  # detector | whole_image


def default_checkpoint() -> Path:
    """The package's shipped default model (`train.checkpoint.default_checkpoint`), or a
    PredictError that says how to get one."""
    from train.checkpoint import CheckpointError, default_checkpoint as shipped

    try:
        return shipped()
    except CheckpointError as e:
        raise PredictError(str(e)) from None


def load_image(src: Any) -> np.ndarray:
    """A path, encoded bytes, a PIL image or a uint8 array -> uint8 array (HxW grey or HxWx3 RGB)."""
    from features.images import BadImage, decode

    if isinstance(src, np.ndarray):
        if src.dtype != np.uint8 or src.ndim not in (2, 3) or 0 in src.shape[:2]:
            raise PredictError(f"an image array must be uint8 HxW or HxWx3 with pixels, got {src.dtype} {src.shape}")
        return src[..., :3] if src.ndim == 3 and src.shape[2] == 4 else src
    if isinstance(src, (str, Path)):
        path = Path(src)
        if path.is_dir():
            raise PredictError(f"{path}: a folder; pass its image files (or run `train predict {path}`, "
                               "which reads folders)")
        if not path.is_file():
            raise PredictError(f"{path}: no such file")
        try:
            data = path.read_bytes()
        except OSError as e:
            raise PredictError(f"{path}: cannot read it ({e.strerror or e})") from None
        try:
            return decode(data)[0]
        except BadImage as e:
            if path.suffix.lower() == ".parquet":  # a manifest or wild_dev's table, given as a photo
                raise PredictError(f"{path}: a Parquet table, not an image: a manifest is scored with `train eval "
                                   "--manifest FILE`; `make wild-folder` writes wild_dev's photos as files") from None
            raise PredictError(f"{path}: not a readable image ({e})") from None
    if isinstance(src, (bytes, bytearray)):
        try:
            return decode(bytes(src))[0]
        except BadImage as e:
            raise PredictError(f"not a readable image ({e})") from None
    if hasattr(src, "convert"):  # a PIL image: the same orientation / bit-depth / alpha rules as a file
        from features.images import to_array

        try:
            return to_array(src)
        except (OSError, ValueError) as e:
            raise PredictError(f"cannot use this PIL image ({e})") from None
    raise PredictError(f"cannot use {type(src).__name__} {src!r:.40} as an image: pass a path, bytes, PIL image "
                       "or uint8 array")


def load(path: str | Path | None):
    """Checkpoint (dir or .safetensors, None = shipped model) -> (model in eval mode, sidecar),
    through `train.checkpoint.load_trained`; its errors come as PredictError."""
    from train.checkpoint import CheckpointError, load_trained

    try:
        return load_trained(path)
    except CheckpointError as e:
        raise PredictError(str(e)) from None


def central_square(image: np.ndarray) -> Face:
    """The largest centred square of `image`: what is classified when no face is found (a photo
    that is already a tight face crop, as many portrait photos are, is kept instead of lost)."""
    h, w = image.shape[:2]
    side = min(h, w)
    x, y = (w - side) // 2, (h - side) // 2
    return Face((int(x), int(y), int(side), int(side)), None, image[y:y + side, x:x + side], "whole_image")


def check_crop_options(*, pad: float | None, crop: str, tta: str, flag: str = "") -> None:
    """Refuse a crop margin, crop or TTA mode `EmotionPredictor` cannot use (PredictError, one
    line). `flag` prefixes each name as the caller's user typed it ("--" for the CLI)."""
    if pad is not None and not -0.5 < pad:  # 1 + 2 * pad is the crop's side over the face's
        raise PredictError(f"{flag}pad {pad} leaves no face to crop; use a value above -0.5 (0: the box itself)")
    if crop not in CROPS:
        raise PredictError(f"{flag}crop {crop!r} unknown; use one of {', '.join(CROPS)}")
    if tta not in TTA_MODES:
        raise PredictError(f"{flag}tta {tta!r} unknown; use one of {', '.join(TTA_MODES)}")


class EmotionPredictor:
    """Face detection -> crop -> the checkpoint's preprocessing -> model -> top-k probabilities."""

    def __init__(self, model, class_names: Sequence[str], preprocess, *, detector: str = "auto",
                 device: str = "cpu", pad: float | None = None, min_face: int = 24, batch_size: int = 64,
                 weights_dir: str | Path | None = None, sidecar: dict | None = None, fallback: bool = True,
                 text=None, tta: str = "flip", crop: str = "box"):
        """`detector` one of DETECTORS ("auto": MTCNN if installed, else Haar, with `notice` saying
        so); `pad` the crop margin per side as a fraction of the face box (None: PADS[detector]);
        `crop` one of CROPS ("box": the padded box, eyes levelled; "landmarks": five landmarks
        onto FER2013's mean face, MTCNN/RetinaFace only). `fallback` classifies the central
        square of a photo where no face is found
        (face_source "whole_image") instead of returning no prediction for it. `text` (a
        train.text_input.CaptionText) gives a caption-fusing model (miniaffectgpt) its caption
        per face; such a model without it is refused. `tta` "flip" (default) averages the logits
        of each face and its mirror image (horizontal flip TTA, as `train eval --tta flip`; twice
        the model time, which is small beside detection), "none" classifies the face once."""
        check_crop_options(pad=pad, crop=crop, tta=tta)
        if detector not in DETECTORS:
            raise PredictError(f"detector {detector!r} unknown; use one of {', '.join(DETECTORS)}")
        self.notice = ""
        if detector == "auto":
            from features.faces import auto_backend

            detector, self.notice = auto_backend()
        if detector == "mtcnn":  # fail once here (package missing, weights corrupt), not once per image
            from features.faces import FaceError, load_mtcnn

            try:
                load_mtcnn(device)
            except FaceError as e:
                raise PredictError(str(e)) from None
        kind = getattr(model, "input_kind", "image")
        if kind == "feature" or (getattr(model, "needs_text", False) and text is None):
            takes = "precomputed embeddings" if kind == "feature" else "caption text features"
            raise PredictError(f"this checkpoint's model takes {takes}, not images: evaluate it with "
                               "`train eval` on a manifest and its feature files"
                               + ("" if kind == "feature" else ", or predict with a caption per face "
                                  "(`train predict --caption TEXT`, or BLIP weights present)"))
        self.text = text
        if text is not None:
            self.notice = "; ".join(n for n in (self.notice, f"captions: {text.source}") if n)
        if detector == "retinaface":  # fail once here, not once per image
            from features.faces import retinaface_weights

            try:
                retinaface_weights(weights_dir)
            except (ValueError, FileNotFoundError) as e:
                raise PredictError(str(e)) from None
        self.model = model.eval().to(device)
        self.class_names = tuple(class_names)
        self.preprocess = preprocess
        self.detector = detector
        self.device = device
        self.pad = PADS.get(detector, 0.0) if pad is None else pad
        self.fallback = fallback
        self.min_face = min_face
        self.batch_size = batch_size
        self.weights_dir = weights_dir
        self.sidecar = sidecar or {}
        self.input_kind = kind
        self.tta = tta
        self.crop = crop

    @classmethod
    def from_checkpoint(cls, path: str | Path | None = None, *, caption: str | None = None,
                        caption_model: str | None = None, text_encoder: str | None = None,
                        **kw) -> "EmotionPredictor":
        """`caption` / `caption_model` / `text_encoder` only matter for caption-fusing models."""
        from train.models.base import fold_batchnorm

        from train.checkpoint import CheckpointError, class_names, preprocess_of

        model, sidecar = load(path)
        model = fold_batchnorm(model)  # this copy only serves predictions: BN folded into the convs
        if getattr(model, "needs_text", False) and "text" not in kw:
            from features.blip import CAPTION_MODEL
            from train.text_input import CaptionText, CaptionTextError

            try:
                kw["text"] = CaptionText(sidecar, caption, caption_model or CAPTION_MODEL, text_encoder,
                                         str(kw.get("device", "cpu")))
            except CaptionTextError as e:
                raise PredictError(str(e)) from None
        try:
            names = class_names(sidecar)
            # a feature-input model has no image preprocessing to read
            pre = None if getattr(model, "input_kind", "image") == "feature" else preprocess_of(sidecar)
        except CheckpointError as e:
            raise PredictError(str(e)) from None
        return cls(model, names, pre, sidecar=sidecar, **kw)

    # -- faces ---------------------------------------------------------------------------------
    def faces(self, image: np.ndarray) -> list[Face]:
        """Every face in `image`, largest first; its central square when the detector is 'none'."""
        return self.faces_batch([image])[0]

    def faces_batch(self, images: Sequence[np.ndarray]) -> list[list[Face]]:
        """Faces of several images (MTCNN runs images of one size as a batch), largest first.

        An image without a face gets its central square (face_source "whole_image") when
        `fallback` is on, else []. Raises PredictError when the detector cannot run.
        """
        if self.detector == "none":  # the central square, as the fallback: a squashed photo is no face
            return [[central_square(im)] for im in images]
        from features.faces import FER_TEMPLATE, FaceError, crop_face, detect_faces_batch

        try:
            found = detect_faces_batch(list(images), backend=self.detector, weights_dir=self.weights_dir,
                                       min_size=self.min_face, device=self.device)
        except (FaceError, FileNotFoundError) as e:  # FileNotFoundError: missing RetinaFace weights
            raise PredictError(f"face detector {self.detector!r}: {e}") from None
        out = []
        for image, fs in zip(images, found):
            faces = [Face(tuple(int(v) for v in f.box), None if f.score is None else float(f.score),
                          crop_face(image, f, pad=self.pad, align=True,
                                    template=FER_TEMPLATE if self.crop == "landmarks" else None)) for f in fs]
            if not faces and self.fallback:
                faces = [central_square(image)]
            out.append(faces)
        return out

    # -- model ---------------------------------------------------------------------------------
    def inputs(self, crops: Sequence[np.ndarray]):
        """Face crops -> the model's input tensor (clip models see each face as a 1-frame clip)."""
        x = self.preprocess.apply(list(crops))
        return x[:, None] if self.input_kind == "clip" else x

    def logits(self, crops: Sequence[np.ndarray]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(crops), self.batch_size):
                x = self.inputs(crops[i:i + self.batch_size]).to(self.device)
                views = [x, x.flip(-1)] if self.tta == "flip" else [x]
                args = ()
                if self.text is not None:  # the face's caption, embedded as in training
                    t, m = self.text.features(self.text.captions(crops[i:i + self.batch_size]))
                    args = (t.to(self.device), None if m is None else m.to(self.device))
                # TTA views averaged in logit space, as train eval does
                out.append((sum(self.model(v, *args).float() for v in views) / len(views)).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.class_names)), np.float32)

    def describe_logits(self, logits: np.ndarray, k: int = 3) -> list[tuple[str, float, tuple]]:
        """Logits (N, C) -> (label, prob, top-k) per row."""
        from train.metrics import softmax

        probs = softmax(logits)
        k = max(1, min(k, len(self.class_names)))
        out = []
        for p in probs:
            order = np.argsort(-p)[:k]
            topk = tuple((self.class_names[j], float(p[j])) for j in order)
            out.append((topk[0][0], topk[0][1], topk))
        return out

    # -- public --------------------------------------------------------------------------------
    def predict(self, image: Any, k: int = 3) -> list[FacePrediction]:
        """All faces of one image, largest first; [] when no face was found."""
        return self.predict_batch([image], k=k)[0]

    def predict_batch(self, images: Sequence[Any], k: int = 3) -> list[list[FacePrediction]]:
        """Faces of many images, classified in batches; one list per image, in order."""
        found = self.faces_batch([load_image(im) for im in images])
        flat = [f for fs in found for f in fs]
        logits = self.logits([f.crop for f in flat])
        preds = iter(zip(flat, logits, self.describe_logits(logits, k)))
        out = []
        for fs in found:
            row = []
            for _ in fs:
                face, lg, (label, prob, topk) = next(preds)
                row.append(FacePrediction(label, prob, face.box, topk, face.score,
                                          tuple(float(v) for v in lg), face.source))
            out.append(row)
        return out

    def top_k(self, image: Any, k: int = 3) -> list[tuple[str, float]]:
        """Top-k (label, probability) of the largest face; [] when there is no face."""
        faces = self.predict(image, k=k)
        return list(faces[0].topk) if faces else []
