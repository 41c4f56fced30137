"""The embedded synthetic faces: a seeded generator of small labelled face images.

This is the data `make demo` and the tests use when no real dataset is at hand. It is NOT a
benchmark: an accuracy measured on it says that the code runs and learns, nothing about
facial-expression recognition on real faces.

Each face is drawn from a handful of parameters. The *expression* parameters (mouth curve,
opening, width and asymmetry; eye openness; brow height and tilt; nose wrinkle) have a mean per
class, a per-sample jitter and an intensity in [0.35, 1.1] that pulls the face toward neutral, so
weak expressions overlap their neighbours as real ones do. The *nuisance* parameters (face
shape, skin and background tone, hair, pose, a lighting gradient, an occluding patch and
sensor noise) do not depend on the class. A small CNN learns it, but not at once.

Every sample has its own random generator keyed by (seed, kind, class, index), so a sample does
not depend on how many others were drawn before it: same seed, same pixels, byte-identical PNGs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

import numpy as np

from features.labels import BASIC7

CLASSES = BASIC7
TEST_FRACTION = 0.2
# kinds keep the random streams of stills and clips apart
_KIND_IMAGE, _KIND_CLIP = 0, 1


@dataclass(frozen=True)
class Expression:
    """Expression parameters, in units of roughly one "clear" expression step."""

    mouth_curve: float = 0.0  # + corners up (smile), - corners down
    mouth_open: float = 0.0  # 0 closed .. 1 wide open
    mouth_width: float = 1.0  # relative to the identity's mouth width
    mouth_skew: float = 0.0  # one corner raised (disgust, contempt-like)
    eye_open: float = 1.0  # 0 shut .. 1.4 wide
    brow_raise: float = 0.0  # + up, - down
    brow_tilt: float = 0.0  # + inner ends up (sad, fear), - inner ends down (angry)
    wrinkle: float = 0.0  # nose wrinkle lines (disgust)

    def blend(self, other: "Expression", t: float) -> "Expression":
        """self + t * (other - self), field by field."""
        return Expression(**{
            f.name: getattr(self, f.name) + t * (getattr(other, f.name) - getattr(self, f.name))
            for f in fields(self)
        })


NEUTRAL = Expression()
# Class prototypes in BASIC7 order, after the facial action units usually listed for each
# (e.g. angry: brows down and together, lids tightened, lips pressed).
PROTOTYPES: dict[str, Expression] = {
    "angry": Expression(mouth_curve=-0.4, mouth_width=0.85, eye_open=0.6, brow_raise=-0.8, brow_tilt=-1.0),
    "disgust": Expression(mouth_curve=-0.5, mouth_open=0.15, mouth_skew=0.8, eye_open=0.5,
                          brow_raise=-0.5, brow_tilt=-0.4, wrinkle=1.0),
    "fear": Expression(mouth_curve=-0.3, mouth_open=0.45, mouth_width=1.2, eye_open=1.35,
                       brow_raise=0.7, brow_tilt=0.8),
    "happy": Expression(mouth_curve=1.0, mouth_open=0.3, mouth_width=1.2, eye_open=0.75, brow_raise=0.1),
    "neutral": NEUTRAL,
    "sad": Expression(mouth_curve=-0.9, mouth_width=0.9, eye_open=0.65, brow_raise=0.1, brow_tilt=1.0),
    "surprise": Expression(mouth_open=1.0, mouth_width=0.75, eye_open=1.45, brow_raise=1.1, brow_tilt=0.2),
}
# per-sample jitter (standard deviation) of each expression parameter
_JITTER = Expression(mouth_curve=0.2, mouth_open=0.08, mouth_width=0.08, mouth_skew=0.15,
                     eye_open=0.12, brow_raise=0.2, brow_tilt=0.2, wrinkle=0.15)


@dataclass(frozen=True)
class Identity:
    """What does not depend on the expression: face shape, tones, hair, pose, lighting."""

    face_w: float
    face_h: float
    eye_dx: float
    eye_y: float
    eye_w: float
    mouth_y: float
    mouth_w: float
    skin: float
    background: float
    ink: float
    hair: bool
    angle: float  # degrees
    scale: float
    shift: tuple[float, float]
    light_dir: float  # radians
    light_amp: float
    occlusion: tuple[float, float, float, float, float] | None  # x, y, w, h, grey (unit coords)
    noise: float


def random_identity(rng: np.random.Generator) -> Identity:
    """One face's nuisance parameters (shape, tones, hair, pose, light, occlusion, noise), drawn
    from `rng`; independent of the expression."""
    occ = None
    if rng.random() < 0.25:
        w, h = rng.uniform(0.15, 0.35, size=2)
        occ = (rng.uniform(0.15, 0.85 - w), rng.uniform(0.2, 0.9 - h), w, h, rng.uniform(0, 255))
    return Identity(
        face_w=rng.uniform(0.29, 0.35), face_h=rng.uniform(0.38, 0.44),
        eye_dx=rng.uniform(0.12, 0.16), eye_y=rng.uniform(0.40, 0.45), eye_w=rng.uniform(0.055, 0.075),
        mouth_y=rng.uniform(0.69, 0.75), mouth_w=rng.uniform(0.10, 0.13),
        skin=rng.uniform(120, 215), background=rng.uniform(10, 120), ink=rng.uniform(15, 70),
        hair=bool(rng.random() < 0.6),
        angle=rng.uniform(-14, 14), scale=rng.uniform(0.88, 1.1),
        shift=(rng.uniform(-0.06, 0.06), rng.uniform(-0.06, 0.06)),
        light_dir=rng.uniform(0, 2 * math.pi), light_amp=rng.uniform(0.0, 0.45),
        occlusion=occ, noise=rng.uniform(3, 12),
    )


def _expression(rng: np.random.Generator, label: str) -> Expression:
    intensity = rng.uniform(0.35, 1.1)
    e = NEUTRAL.blend(PROTOTYPES[label], intensity)
    return Expression(**{
        f.name: getattr(e, f.name) + rng.normal(0, getattr(_JITTER, f.name)) for f in fields(e)
    })


def _supersample(size: int) -> int:
    # draw large and downsample (INTER_AREA) for anti-aliased strokes; 4x is plenty at 48 px
    return max(1, math.ceil(192 / size))


def draw_face(ident: Identity, ex: Expression, size: int, rng: np.random.Generator) -> np.ndarray:
    """Render face `ident` making expression `ex`: a (size, size) uint8 grey image; `rng` only
    feeds the per-frame sensor noise."""
    import cv2

    s = size * _supersample(size)
    canvas = np.full((s, s), ident.background, np.float32)

    def p(x: float, y: float) -> tuple[int, int]:
        return int(round(x * s)), int(round(y * s))

    def d(v: float) -> int:
        return max(1, int(round(v * s)))

    cx, cy = 0.5, 0.52
    if ident.hair:
        cv2.ellipse(canvas, p(cx, cy - 0.06), (d(ident.face_w + 0.03), d(ident.face_h)), 0, 180, 360,
                    ident.ink * 0.8, -1, cv2.LINE_AA)
    cv2.ellipse(canvas, p(cx, cy), (d(ident.face_w), d(ident.face_h)), 0, 0, 360, ident.skin, -1, cv2.LINE_AA)
    ink = ident.ink
    thick = d(0.018)

    # eyes: white-ish almond + pupil; below ~0.15 openness the lid is a line
    for side in (-1, 1):
        ex_, ey_ = cx + side * ident.eye_dx, ident.eye_y
        eh = ident.eye_w * 0.5 * max(ex.eye_open, 0.0)
        if eh < ident.eye_w * 0.08:
            cv2.line(canvas, p(ex_ - ident.eye_w, ey_), p(ex_ + ident.eye_w, ey_), ink, thick, cv2.LINE_AA)
        else:
            cv2.ellipse(canvas, p(ex_, ey_), (d(ident.eye_w), d(eh)), 0, 0, 360,
                        min(255.0, ident.skin + 45), -1, cv2.LINE_AA)
            cv2.circle(canvas, p(ex_, ey_), d(min(eh, ident.eye_w * 0.45)), ink, -1, cv2.LINE_AA)
            cv2.ellipse(canvas, p(ex_, ey_), (d(ident.eye_w), d(eh)), 0, 0, 360, ink, d(0.008), cv2.LINE_AA)
        # brows: inner end moves with tilt, whole brow with raise
        by = ey_ - 0.075 - 0.035 * ex.brow_raise
        inner = (ex_ - side * ident.eye_w * 0.3, by - 0.03 * ex.brow_tilt)
        outer = (ex_ + side * ident.eye_w * 1.2, by + 0.012 * ex.brow_tilt)
        cv2.line(canvas, p(*inner), p(*outer), ink, d(0.022), cv2.LINE_AA)

    # nose, and wrinkle lines beside it
    ny = (ident.eye_y + ident.mouth_y) / 2 + 0.02
    cv2.line(canvas, p(cx, ident.eye_y + 0.03), p(cx - 0.015, ny), ink * 1.4, d(0.01), cv2.LINE_AA)
    cv2.line(canvas, p(cx - 0.03, ny), p(cx + 0.03, ny), ink * 1.4, d(0.012), cv2.LINE_AA)
    if ex.wrinkle > 0.3:
        shade = ident.skin - min(1.0, ex.wrinkle) * (ident.skin - ink) * 0.7
        for side in (-1, 1):
            for k in range(2):
                y0 = ident.eye_y + 0.04 + 0.025 * k
                cv2.line(canvas, p(cx + side * 0.025, y0), p(cx + side * 0.06, y0 + 0.012), shade,
                         d(0.008), cv2.LINE_AA)

    _draw_mouth(canvas, ident, ex, p, d, cx)
    if ident.occlusion is not None:
        ox, oy, ow, oh, grey = ident.occlusion
        cv2.rectangle(canvas, p(ox, oy), p(ox + ow, oy + oh), grey, -1)

    canvas = _pose_and_light(canvas, ident)
    img = cv2.resize(canvas, (size, size), interpolation=cv2.INTER_AREA)
    img = img + rng.normal(0, ident.noise, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _draw_mouth(canvas, ident: Identity, ex: Expression, p, d, cx: float) -> None:
    import cv2

    w = ident.mouth_w * max(ex.mouth_width, 0.4)
    xs = np.linspace(-1.0, 1.0, 25)
    # corners rise with the curve (image y points down); skew lifts one corner only
    base = ident.mouth_y - 0.045 * ex.mouth_curve * xs**2 - 0.025 * ex.mouth_skew * np.clip(xs, 0, None)
    bulge = 1.0 - xs**2
    gap = 0.075 * max(ex.mouth_open, 0.0)
    upper = np.stack([cx + w * xs, base - 0.35 * gap * bulge], 1)
    lower = np.stack([cx + w * xs, base + 0.65 * gap * bulge], 1)
    to_px = lambda pts: np.array([p(x, y) for x, y in pts], np.int32)  # noqa: E731
    if gap * 0.9 > 0.012:
        poly = np.concatenate([to_px(upper), to_px(lower[::-1])])
        cv2.fillPoly(canvas, [poly], ident.ink * 0.6, cv2.LINE_AA)
        cv2.polylines(canvas, [poly], True, ident.ink, d(0.012), cv2.LINE_AA)
    else:
        cv2.polylines(canvas, [to_px(upper)], False, ident.ink, d(0.016), cv2.LINE_AA)


def _pose_and_light(canvas: np.ndarray, ident: Identity) -> np.ndarray:
    import cv2

    s = canvas.shape[0]
    m = cv2.getRotationMatrix2D((s / 2, s / 2), ident.angle, ident.scale)
    m[:, 2] += (ident.shift[0] * s, ident.shift[1] * s)
    out = cv2.warpAffine(canvas, m, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    ramp = xx * math.cos(ident.light_dir) + yy * math.sin(ident.light_dir)
    return out * (1.0 + ident.light_amp * 2 * ramp)


def _rng(seed: int, kind: int, label_id: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, kind, label_id, index])


def synth_face(label_id: int, index: int, seed: int = 0, size: int = 48) -> np.ndarray:
    """One still face (uint8, size x size) of class CLASSES[label_id], sample number `index`."""
    _check(seed, size)
    rng = _rng(seed, _KIND_IMAGE, label_id, index)
    ident = random_identity(rng)
    return draw_face(ident, _expression(rng, CLASSES[label_id]), size, rng)


def synth_faces(n_per_class: int, seed: int = 0, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """`n_per_class` faces of each of the 7 classes: (uint8 [N, size, size], int64 label ids [N]),
    class by class in BASIC7 order."""
    if n_per_class < 0:
        raise ValueError(f"n_per_class must be >= 0, got {n_per_class}")
    labels = np.repeat(np.arange(len(CLASSES), dtype=np.int64), n_per_class)
    images = np.zeros((len(labels), size, size), np.uint8)
    for k, (c, i) in enumerate((c, i) for c in range(len(CLASSES)) for i in range(n_per_class)):
        images[k] = synth_face(c, i, seed, size)
    return images, labels


def synth_clip(label_id: int, index: int = 0, seed: int = 0, size: int = 48, frames: int = 16) -> np.ndarray:
    """A short clip (uint8 [frames, size, size]): one face going from neutral to the expression
    of CLASSES[label_id] (onset, then apex held), with a small head drift across frames."""
    _check(seed, size)
    if frames < 2:
        raise ValueError(f"a clip needs at least 2 frames, got {frames}")
    rng = _rng(seed, _KIND_CLIP, label_id, index)
    ident = random_identity(rng)
    apex = _expression(rng, CLASSES[label_id])
    start = rng.uniform(0.1, 0.3) * frames
    peak = rng.uniform(0.55, 0.8) * frames
    drift = rng.normal(0, 1.5), rng.normal(0, 0.01), rng.normal(0, 0.01)
    out = np.zeros((frames, size, size), np.uint8)
    for f in range(frames):
        t = min(1.0, max(0.0, (f - start) / max(peak - start, 1e-6)))
        t = t * t * (3 - 2 * t)  # smoothstep: onsets ease in and out
        r = f / (frames - 1)
        moved = replace(ident, angle=ident.angle + drift[0] * r,
                        shift=(ident.shift[0] + drift[1] * r, ident.shift[1] + drift[2] * r))
        out[f] = draw_face(moved, NEUTRAL.blend(apex, t), size, rng)
    return out


def _check(seed: int, size: int) -> None:
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 16 <= size <= 512:
        raise ValueError(f"size must be between 16 and 512 pixels, got {size}")


@dataclass(frozen=True)
class SynthConfig:
    out: Path
    per_class: int
    seed: int = 0
    size: int = 48
    videos: int = 0
    frames: int = 16


def split_counts(per_class: int) -> tuple[int, int]:
    """(train, test) images per class: test is ~20 % of per_class, at least 1 when per_class >= 2."""
    test = int(round(per_class * TEST_FRACTION))
    if per_class >= 2:
        test = max(test, 1)
    return per_class - test, test


def write_tree(cfg: SynthConfig, progress: Callable[[int], None] | None = None) -> dict[str, int]:
    """Write the ImageFolder tree `out/{train,test}/<class>/NNNNN.png` (and, with videos > 0,
    `out/videos/<class>/clip_NNNN/NNN.png`). Returns the number of files written per part.
    `progress(n)` is called with the number of files just written."""
    from PIL import Image

    if cfg.per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {cfg.per_class}")
    n_train, n_test = split_counts(cfg.per_class)
    counts = {"train": 0, "test": 0, "videos": 0}
    for c, name in enumerate(CLASSES):
        for i in range(cfg.per_class):
            split, j = ("train", i) if i < n_train else ("test", i - n_train)
            path = cfg.out / split / name / f"{j:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synth_face(c, i, cfg.seed, cfg.size)).save(path, format="PNG")
            counts[split] += 1
            if progress:
                progress(1)
        for k in range(cfg.videos):
            clip_dir = cfg.out / "videos" / name / f"clip_{k:04d}"
            clip_dir.mkdir(parents=True, exist_ok=True)
            for f, frame in enumerate(synth_clip(c, k, cfg.seed, cfg.size, cfg.frames)):
                Image.fromarray(frame).save(clip_dir / f"{f:03d}.png", format="PNG")
            counts["videos"] += cfg.frames
            if progress:
                progress(cfg.frames)
    return counts


def total_files(cfg: SynthConfig) -> int:
    return len(CLASSES) * (cfg.per_class + cfg.videos * cfg.frames)
