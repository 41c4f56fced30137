"""Video files and cameras: per-frame faces, logits smoothed over a moving window, an annotated video.

The smoothing is the AffectFusion seed's live demo: keep the last N frames' logits and classify
their mean. With several faces in view, each face keeps its own window; a face is followed from
frame to frame by box overlap (greedy IoU matching), which is enough for a webcam and keeps the
module free of a tracker dependency.
"""

from __future__ import annotations

import os
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from train.api import EmotionPredictor, FacePrediction, PredictError

IOU_MATCH = 0.3
FOURCCS = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "MJPG"}


@dataclass(frozen=True)
class FrameResult:
    frame: int
    time_s: float  # the container's timestamp of this frame (CAP_PROP_POS_MSEC), else frame / fps
    faces: tuple[FacePrediction, ...]  # smoothed over the window, largest first
    track_ids: tuple[int, ...]
    gradcam: tuple[str, ...] = ()  # overlay files written for this frame's faces
    timed_by: str = "container"  # container | fps (the file or camera gave no usable timestamps)
    note: str = ""  # on the last frame of a file that ended before the frames its container announces


def iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


class Smoother:
    """Per-track windows of logits; `update` returns each face's smoothed logits and track id."""

    def __init__(self, window: int):
        if window < 1:
            raise PredictError(f"--window must be >= 1 frame, got {window}")
        self.window = window
        self.tracks: dict[int, dict] = {}
        self._next = 0

    def update(self, boxes, logits: np.ndarray) -> tuple[list[np.ndarray], list[int]]:
        free = set(self.tracks)
        ids = []
        for box in boxes:
            best = max(free, key=lambda t: iou(box, self.tracks[t]["box"]), default=None)
            if best is None or iou(box, self.tracks[best]["box"]) < IOU_MATCH:
                best = self._next
                self._next += 1
                self.tracks[best] = {"box": box, "logits": deque(maxlen=self.window)}
            else:
                free.discard(best)
            ids.append(best)
        for t in free:  # a face that left the view starts over when it comes back
            del self.tracks[t]
        out = []
        for box, lg, t in zip(boxes, logits, ids):
            self.tracks[t]["box"] = box
            self.tracks[t]["logits"].append(np.asarray(lg, dtype=np.float64))
            out.append(np.mean(self.tracks[t]["logits"], axis=0))
        return out, ids


def open_capture(source: str | int | Path):
    import cv2

    # FFmpeg's own log lines ("moov atom not found", "huffman table decode error") would precede
    # or interleave with our one line; OpenCV reads this when FFmpeg first starts in the process.
    # Set OPENCV_FFMPEG_LOGLEVEL yourself (e.g. 16, errors) to see them.
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
    quiet = getattr(getattr(cv2, "utils", None), "logging", None)
    level = quiet.getLogLevel() if quiet else None
    if quiet:  # OpenCV's own "[ WARN ] can't open camera" lines would precede our one line
        quiet.setLogLevel(quiet.LOG_LEVEL_ERROR)
    try:
        cap = cv2.VideoCapture(int(source) if isinstance(source, int) else str(source))
    finally:
        if quiet:
            quiet.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        what = f"camera:{source}: cannot open it" if isinstance(source, int) else f"{source}: cannot open it as a video"
        raise PredictError(f"{what}: OpenCV could not read it (missing, not a video, or a codec this OpenCV "
                           "build lacks); check the path or camera index")
    return cap


def annotate(frame_rgb: np.ndarray, faces, ids) -> np.ndarray:
    """Boxes and 'label prob' on a copy of the frame (RGB in, RGB out)."""
    import cv2

    img = np.ascontiguousarray(frame_rgb.copy())
    for f, t in zip(faces, ids):
        x, y, w, h = f.box
        # a face the detector found is green; the central square classified without one is orange
        colour = (255, 160, 0) if f.face_source == "whole_image" else (0, 220, 0)
        cv2.rectangle(img, (x, y), (x + w, y + h), colour, 2)
        text = f"#{t} {'whole image: ' if f.face_source == 'whole_image' else ''}{f.label} {f.prob:.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)
        top = max(0, y - th - base - 4)
        # a filled label box: text straight on the frame is unreadable over hair or background
        cv2.rectangle(img, (x, top), (x + tw + 4, top + th + base + 4), colour, -1)
        cv2.putText(img, text, (x + 2, top + th + 2), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1,
                    cv2.LINE_AA)
    return img


def predict_stream(predictor: EmotionPredictor, source: str | int | Path, *, window: int = 16,
                   k: int = 3, out_video: str | Path | None = None, max_frames: int | None = None,
                   progress: Callable[[int], None] | None = None,
                   on_faces: Callable[[int, list, tuple], tuple[str, ...]] | None = None) -> list[FrameResult]:
    """Every frame of a video file or camera -> smoothed predictions; optionally an annotated video.

    Frame times are the container's timestamps (CAP_PROP_POS_MSEC after each read), so a
    variable-frame-rate file reports when a frame is shown, not frame / fps; when a source gives
    none (a camera, or a file whose timestamps do not increase) every time is frame / fps and
    `timed_by` says "fps". `on_faces(frame, faces, predictions)` (e.g. Grad-CAM overlays) returns
    the files it wrote for that frame. Raises PredictError when the source cannot be opened or
    yields no frame.
    """
    import cv2

    smoother = Smoother(window)
    cap = open_capture(source)
    announced = 0 if isinstance(source, int) else int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if fps > 0 else 25.0  # cameras often report 0
    writer = None
    results: list[FrameResult] = []
    stamps: list[float] = []
    try:
        while max_frames is None or len(results) < max_frames:
            ok, bgr = cap.read()
            if not ok:
                break
            stamps.append(float(cap.get(cv2.CAP_PROP_POS_MSEC)))
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            faces = predictor.faces(rgb)
            raw = predictor.logits([f.crop for f in faces])
            smoothed, ids = smoother.update([f.box for f in faces], raw)
            smoothed = np.asarray(smoothed).reshape(len(faces), len(predictor.class_names))
            described = predictor.describe_logits(smoothed, k)
            preds = tuple(FacePrediction(label, prob, f.box, topk, f.score, tuple(map(float, lg)), f.source)
                          for f, lg, (label, prob, topk) in zip(faces, smoothed, described))
            n = len(results)
            cams = on_faces(n, faces, preds) if on_faces is not None and faces else ()
            results.append(FrameResult(n, n / fps, preds, tuple(ids), cams))
            if out_video is not None:
                if writer is None:
                    writer = _writer(out_video, fps, rgb.shape[1], rgb.shape[0])
                writer.write(cv2.cvtColor(annotate(rgb, preds, ids), cv2.COLOR_RGB2BGR))
            if progress is not None:
                progress(1)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    if not results:
        raise PredictError(f"{source}: opened, but no frame could be read from it (zero frames)")
    results = _with_times(results, stamps)
    # a frame short of the count is common (containers estimate it); more is a file cut short
    if (max_frames is None or len(results) < max_frames) and len(results) < announced - 1:
        from dataclasses import replace

        results[-1] = replace(results[-1], note=f"the video ended after {len(results)} of the {announced} frames "
                                                "its container announces (truncated or damaged?)")
    return results


def _with_times(results: list[FrameResult], stamps_ms: list[float]) -> list[FrameResult]:
    """Container times when they are usable (all >= 0 and strictly increasing), else keep frame / fps."""
    from dataclasses import replace

    ok = len(stamps_ms) == len(results) and all(t >= 0 for t in stamps_ms) and (
        len(stamps_ms) == 1 or all(b > a for a, b in zip(stamps_ms, stamps_ms[1:])))
    if not ok:
        return [replace(r, timed_by="fps") for r in results]
    # OpenCV's FFmpeg backend reports the first frame at 0 ms; a one-frame file has nothing to check
    return [replace(r, time_s=t / 1000.0) for r, t in zip(results, stamps_ms)]


def _writer(path: str | Path, fps: float, width: int, height: int):
    import cv2

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fourcc = FOURCCS.get(path.suffix.lower())
    if fourcc is None:
        raise PredictError(f"--out-video {path}: use a .mp4 (mp4v) or .avi (MJPG) file name")
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    if not w.isOpened():
        raise PredictError(f"cannot write video {path} with codec {fourcc}")
    return w
