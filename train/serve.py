"""`train serve`'s page: photos, the browser's webcam and short videos in, boxed faces, top-k bars,
Grad-CAM and a label-over-time plot out (Gradio Blocks, bound to 127.0.0.1 unless told otherwise).

Every answer comes from one `EmotionPredictor` (loaded once) through its public methods
(`faces`, `logits`, `describe_logits`: exactly what `predict` runs), and videos through
`train.video.predict_stream`, so the page and `train predict` cannot disagree. The handlers never
raise: an input that cannot be used (not an image, over the decoder's pixel limit, an empty or
unreadable video) becomes a message in the page, and the server keeps answering.

Gradio is the optional `serve` extra; it is imported inside `build_app`, so importing this module
(and `train --help`) stays fast.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from train.api import EmotionPredictor, PredictError, load_image

MAX_PHOTOS = 16  # per request: more are named in the message and left out
MAX_VIDEO_FRAMES = 300  # a "short video": ~10-12 s at 25-30 fps
MAX_UPLOAD = "200mb"  # Gradio refuses larger files before they reach a handler
SERVE_INSTALL = "pip install -e '.[serve]' (make setup installs it)"


@dataclass(frozen=True)
class PhotoAnswer:
    """What the page shows for one request of photos."""

    annotated: list[tuple[np.ndarray, str]]  # each photo with its faces boxed, and a caption
    panels: list[tuple[np.ndarray, str]]  # per face: crop | Grad-CAM | top-k bars
    first_topk: dict[str, float]  # top-k of the first face found (for gr.Label's bars)
    records: list[dict]  # one per face: image, face, label, prob, box, topk, face_score, face_source
    message: str  # Markdown: what was found, and one line per input that could not be used


def _face_record(name: str, i: int, face, label: str, prob: float, topk) -> dict:
    source = getattr(face, "source", None) or getattr(face, "face_source", None) or "detector"
    return {"image": name, "face": i, "label": label, "prob": round(float(prob), 4),
            "box": [int(v) for v in face.box], "topk": [[lab, round(float(p), 4)] for lab, p in topk],
            "face_score": None if getattr(face, "score", None) is None else round(float(face.score), 4),
            "face_source": source}


class Analyser:
    """The page's work on one predictor. A lock serialises model use: Grad-CAM switches hooks on
    the shared model, and Gradio runs different events on different threads."""

    def __init__(self, predictor: EmotionPredictor, k: int = 3, window: int = 16, gradcam: bool = True):
        self.predictor = predictor
        self.k = max(1, min(k, len(predictor.class_names)))
        self.window = window
        self.gradcam = gradcam
        self.lock = threading.Lock()

    # -- photos --------------------------------------------------------------------------------
    def photo(self, image: np.ndarray, name: str) -> tuple[np.ndarray, list, list[dict]]:
        """One decoded photo -> (boxed copy, face panels, face records); the same faces, logits
        and top-k as `EmotionPredictor.predict`."""
        from train.plots import face_panel
        from train.video import annotate

        p = self.predictor
        with self.lock:
            faces = p.faces(image)
            logits = p.logits([f.crop for f in faces])
            described = p.describe_logits(logits, self.k)
            cams = [self._cam(f.crop, label) for f, (label, _, _) in zip(faces, described)]
        records = [_face_record(name, i, f, label, prob, topk)
                   for i, (f, (label, prob, topk)) in enumerate(zip(faces, described))]
        boxed = annotate(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2),
                         [_Boxed(tuple(r["box"]), r["label"], r["prob"], r["face_source"]) for r in records],
                         range(len(records)))
        panels = []
        for r, f, cam in zip(records, faces, cams):
            what = "whole image (no face found)" if r["face_source"] == "whole_image" else f"face #{r['face']}"
            caption = f"{name} {what}: {r['label']} {r['prob']:.2f}"
            panels.append((face_panel(f.crop, cam, tuple(map(tuple, r["topk"])), caption), caption))
        return boxed, panels, records

    def _cam(self, crop: np.ndarray, label: str) -> np.ndarray | None:
        if not self.gradcam:
            return None
        from train.gradcam import NoCamLayer, grad_cam, overlay

        p = self.predictor
        try:
            cam, _ = grad_cam(p.model, p.inputs([crop]).to(p.device), target=p.class_names.index(label))
        except (NoCamLayer, ValueError):
            return None  # a model without a 2-D conv stage: the panel shows no overlay
        return overlay(crop, cam)

    def photos(self, paths: Sequence[Any] | None) -> PhotoAnswer:
        """Uploaded files (paths) -> a PhotoAnswer; never raises for a bad file."""
        paths = [p for p in (paths or []) if p]
        notes: list[str] = []
        if not paths:
            return PhotoAnswer([], [], {}, [], "Drop one or more photos (JPEG, PNG, WebP, ...) above.")
        if len(paths) > MAX_PHOTOS:
            notes.append(f"- {len(paths) - MAX_PHOTOS} photos left out: at most {MAX_PHOTOS} per request")
            paths = paths[:MAX_PHOTOS]
        annotated, panels, records = [], [], []
        for path in paths:
            name = Path(str(path)).name
            try:
                image = load_image(Path(str(path)))
                boxed, ps, rs = self.photo(image, name)
            except PredictError as e:
                notes.append(f"- **{name}**: {_one_line(e, path, name)}; upload a photo (JPEG, PNG, WebP) "
                             "under 64 megapixels")
                continue
            except Exception as e:  # the server must outlive any input: say it, log it, go on
                traceback.print_exc(file=sys.stderr)
                notes.append(f"- **{name}**: could not be analysed ({type(e).__name__}: {_one_line(e, path, name)})")
                continue
            annotated.append((boxed, f"{name}: {len(rs)} face(s)"))
            panels += ps
            records += rs
        return PhotoAnswer(annotated, panels, _topk_dict(records), records,
                           _summary(len(paths), records, notes))

    def webcam(self, frame: np.ndarray | None) -> PhotoAnswer:
        """One webcam snapshot (RGB uint8 from the browser) -> a PhotoAnswer."""
        if frame is None:
            return PhotoAnswer([], [], {}, [], "Allow the camera in your browser, then take a snapshot.")
        try:
            image = load_image(np.ascontiguousarray(frame))
            boxed, panels, records = self.photo(image, "webcam")
        except PredictError as e:
            return PhotoAnswer([], [], {}, [], f"- **webcam**: {_one_line(e)}")
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return PhotoAnswer([], [], {}, [], f"- **webcam**: could not be analysed ({type(e).__name__})")
        return PhotoAnswer([(boxed, f"webcam: {len(records)} face(s)")], panels, _topk_dict(records), records,
                           _summary(1, records, []))

    # -- video ---------------------------------------------------------------------------------
    def video(self, path: Any | None) -> tuple[np.ndarray | None, dict, str]:
        """A short video file -> (label-over-time plot, summary, message); never raises."""
        from train.metrics import softmax
        from train.plots import label_timeline
        from train.video import predict_stream

        if not path:
            return None, {}, "Drop a short video (MP4, AVI, MOV) above."
        name = Path(str(path)).name
        sources: dict[int, str] = {}  # frame -> where its largest "face" came from

        def note_source(frame: int, faces, _preds) -> tuple[str, ...]:
            sources[frame] = getattr(faces[0], "source", "detector")
            return ()

        try:
            with self.lock:
                frames = predict_stream(self.predictor, str(path), window=self.window, k=self.k,
                                        max_frames=MAX_VIDEO_FRAMES, on_faces=note_source)
        except PredictError as e:
            return None, {}, f"- **{name}**: {_one_line(e, path, name)}; upload a video file with at least one frame"
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            return None, {}, f"- **{name}**: could not be analysed ({type(e).__name__}: {_one_line(e, path, name)})"
        names = self.predictor.class_names
        times = np.array([fr.time_s for fr in frames], dtype=float)
        probs = np.full((len(frames), len(names)), np.nan)
        labels = np.full(len(frames), -1)
        whole = 0
        for t, fr in enumerate(frames):
            if not fr.faces or not fr.faces[0].logits:
                continue
            if "whole_image" in (sources.get(t), getattr(fr.faces[0], "face_source", None)):
                whole += 1  # no face in this frame: its centre was classified; the plot leaves a gap
                continue
            probs[t] = softmax(np.asarray(fr.faces[0].logits, dtype=np.float64)[None])[0]
            labels[t] = names.index(fr.faces[0].label)
        plot = label_timeline(times, probs, names, labels)
        seen = labels[labels >= 0]
        counts = {names[k]: int((seen == k).sum()) for k in np.unique(seen)}
        summary = {"video": name, "frames": len(frames), "frames_with_face": int(len(seen)),
                   "frames_without_face": len(frames) - int(len(seen)), "window": self.window, "labels": counts,
                   "timeline": [{"t": round(float(t), 3), "label": names[k] if k >= 0 else None}
                                for t, k in zip(times, labels)]}
        more = " (the first ones: a longer video is cut)" if len(frames) == MAX_VIDEO_FRAMES else ""
        msg = (f"{len(frames)} frames{more}, a face in {len(seen)}; smoothed over {self.window} frames. "
               + (f"Most frames: **{max(counts, key=counts.get)}**." if counts else "No face found."))
        return plot, summary, msg


@dataclass(frozen=True)
class _Boxed:  # what train.video.annotate reads from a prediction
    box: tuple[int, int, int, int]
    label: str
    prob: float
    face_source: str = "detector"


def _one_line(e: Exception, path: Any = None, name: str = "") -> str:
    """The error as one line, the upload's temporary path replaced by the name the user gave it."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text.replace(f"{path}: ", "").replace(str(path), name) if path else text


def _topk_dict(records: list[dict]) -> dict[str, float]:
    return {lab: p for lab, p in records[0]["topk"]} if records else {}


def _summary(n_inputs: int, records: list[dict], notes: list[str]) -> str:
    faces = sum(r["face_source"] != "whole_image" for r in records)
    whole = len(records) - faces
    head = f"{n_inputs} photo(s): {faces} face(s) found"
    if whole:
        head += f"; {whole} photo(s) without a detected face were classified whole"
    return "\n".join([head + "."] + notes)


# ---- the page ------------------------------------------------------------------------------------

def build_app(analyser: Analyser, title: str = "affectlab: facial expressions"):
    """The Gradio Blocks page over `analyser`. API names (for gradio_client): /photos, /webcam, /video."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a local page
    import gradio as gr

    p = analyser.predictor
    model = (p.sidecar.get("model") or {}).get("name", "model")
    with gr.Blocks(title=title, analytics_enabled=False) as demo:
        gr.Markdown(f"## {title}\nModel **{model}** ({', '.join(p.class_names)}); detector "
                    f"**{p.detector}**; top-{analyser.k}. Everything runs on this machine; nothing is "
                    "uploaded elsewhere.")
        with gr.Tab("Photos"):
            files = gr.File(label="Photos", file_count="multiple", type="filepath", elem_id="photos-in")
            go = gr.Button("Analyse", variant="primary")
            out = _photo_outputs(gr)
            go.click(lambda f: _photo_tuple(analyser.photos(f)), files, out, api_name="photos")
        with gr.Tab("Webcam"):
            cam = gr.Image(label="Webcam", sources=["webcam"], type="numpy")
            snap = gr.Button("Analyse snapshot", variant="primary")
            out_cam = _photo_outputs(gr)
            snap.click(lambda f: _photo_tuple(analyser.webcam(f)), cam, out_cam, api_name="webcam")
        with gr.Tab("Video"):
            vid = gr.File(label="A short video", file_count="single", type="filepath")
            go_vid = gr.Button("Analyse video", variant="primary")
            vmsg = gr.Markdown()
            vplot = gr.Image(label=f"Label over time (largest face, smoothed over {analyser.window} frames)",
                             type="numpy", interactive=False)
            vjson = gr.JSON(label="Summary")
            go_vid.click(analyser.video, vid, [vplot, vjson, vmsg], api_name="video")
    return demo


def _photo_outputs(gr):
    msg = gr.Markdown()
    with gr.Row():
        boxed = gr.Gallery(label="Faces found", columns=2, height=420, object_fit="contain", preview=False,
                           interactive=False)
        label = gr.Label(label="Top-k (first face)")
    panels = gr.Image(label="Each face: crop, Grad-CAM, top-k probabilities", type="numpy", interactive=False,
                      elem_id="faces-out")
    records = gr.JSON(label="Predictions")
    return [boxed, panels, label, records, msg]


def _photo_tuple(a: PhotoAnswer):
    return a.annotated, stack([p for p, _ in a.panels]), a.first_topk, a.records, a.message


def stack(images: Sequence[np.ndarray]) -> np.ndarray | None:
    """RGB images one under the other (narrower ones padded white on the right); None for none.
    One picture, because a gallery's square cells crop wide panels."""
    if not images:
        return None
    width = max(im.shape[1] for im in images)
    return np.vstack([np.pad(im, ((0, 0), (0, width - im.shape[1]), (0, 0)), constant_values=255)
                      for im in images])


def serve(analyser: Analyser, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          stop_after: float | None = None, quiet: bool = False,
          announce: Callable[[str], None] | None = None) -> None:
    """Start the page and block until Ctrl-C (or `stop_after` seconds); `announce` gets the
    page's local URL once it is up. Raises OSError when the port is taken."""
    demo = build_app(analyser)
    import gradio as gr

    demo.queue(default_concurrency_limit=1)  # one model, one request at a time; the rest wait in order
    demo.launch(server_name=host, server_port=port, share=share, prevent_thread_lock=True,
                max_file_size=MAX_UPLOAD, show_error=True, quiet=quiet, ssr_mode=False, mcp_server=False,
                theme=gr.themes.Default())
    if announce is not None:
        announce(demo.local_url)
    deadline = None if stop_after is None else time.monotonic() + stop_after
    try:
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        demo.close()
