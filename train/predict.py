"""`train predict`'s engine: inputs -> per-face records, Grad-CAM overlays, optional BLIP text.

Inputs are image files, directories (searched recursively), video files or camera indices. A bad
input becomes an error record with a message, and the rest of the batch goes on; the CLI turns
the records into a table, JSON or CSV.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from features.blip import CAPTION_MODEL, VQA_MODEL
from features.images import IMAGE_EXTS
from train.api import EmotionPredictor, FacePrediction, PredictError, load_image

VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg", ".wmv"})
# The XAI seed's questions about the face (its BLIP-VQA step).
VQA_QUESTIONS = ("What is the state of the mouth?", "What is the state of the eyes?",
                 "What are the eyebrows doing?", "What is the facial expression?")


@dataclass(frozen=True)
class Source:
    kind: str  # image | video | camera
    ref: str | int


@dataclass(frozen=True)
class Record:
    """One image or video frame: its faces, or why there are none."""

    source: str
    status: str  # ok | no_face | error | skipped
    message: str = ""
    frame: int | None = None
    faces: tuple[FacePrediction, ...] = ()
    gradcam: tuple[str, ...] = ()
    description: tuple[dict, ...] = ()  # per face: {"caption": ..., "vqa": {question: answer}}
    time_s: float | None = None  # video frames: the container's timestamp (CAP_PROP_POS_MSEC)
    true_label: str | None = None  # labelled folders (<root>/<class>/<file>): the folder's class
    note: str = ""  # what a user should know about the source (a video that ended early); also in `message`


# the message of a face that is the central square because the detector found none (the fallback)
WHOLE_IMAGE = "no face found: the central square was classified"


@dataclass(frozen=True)
class PredictConfig:
    top_k: int = 3
    gradcam_dir: Path | None = None
    window: int = 16
    out_video: Path | None = None
    describe: bool = False
    caption_model: str = CAPTION_MODEL
    vqa_model: str = VQA_MODEL
    max_frames: int | None = None
    batch_files: int = 32


def collect(inputs: Sequence[str | int | Path]) -> tuple[list[Source], list[Record]]:
    """Expand inputs into sources; missing paths and empty folders become error records, files
    in folders with other extensions (.heic, .txt, ...) one `skipped` record each, so the summary
    counts them."""
    sources, errors = [], []
    for item in inputs:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit() and not Path(item).exists()):
            sources.append(Source("camera", int(item)))
            continue
        p = Path(item)
        if p.is_dir():
            every = sorted(q for q in p.rglob("*") if q.is_file() and not q.name.startswith("."))
            files = [q for q in every if q.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS]
            errors.extend(Record(str(q), "skipped", f"extension {q.suffix or '(none)'} is not an image or "
                                 "video type predict reads") for q in every if q.suffix.lower() not in IMAGE_EXTS | VIDEO_EXTS)
            if not files:
                errors.append(Record(str(p), "error", "folder holds no image or video files "
                                     f"({', '.join(sorted(IMAGE_EXTS))}, ...)"))
            sources.extend(_source_of(q) for q in files)
        elif p.is_file():
            sources.append(_source_of(p))
        else:
            errors.append(Record(str(p), "error", "no such file or folder"))
    seen: set = set()
    unique = []
    for src in sources:  # a file named twice (a photo and its folder) is predicted once
        key = src.ref if src.kind == "camera" else Path(src.ref).resolve()
        if key not in seen:
            seen.add(key)
            unique.append(src)
    return unique, errors


def _source_of(p: Path) -> Source:
    return Source("video" if p.suffix.lower() in VIDEO_EXTS else "image", str(p))


def predict_images(predictor: EmotionPredictor, paths: Sequence[str], cfg: PredictConfig,
                   describer=None, progress: Callable[[int], None] | None = None) -> list[Record]:
    """Images in chunks: each file is read on its own (so one bad file costs only its own record),
    the chunk's readable images are searched for faces together (MTCNN batches equal sizes), then
    the chunk's faces go through the model as one batch."""
    out: list[Record] = []
    for start in range(0, len(paths), cfg.batch_files):
        chunk = paths[start:start + cfg.batch_files]
        # keyed by position in the chunk, not by path: a path given twice is predicted twice
        images, errs = {}, {}
        for k, path in enumerate(chunk):
            try:
                images[k] = load_image(path)
            except PredictError as e:
                errs[k] = str(e)
        found = dict(zip(images, predictor.faces_batch(list(images.values()))))
        crops = [f.crop for faces in found.values() for f in faces]
        logits = predictor.logits(crops)
        described = iter(zip(logits, predictor.describe_logits(logits, cfg.top_k)))
        for k, path in enumerate(chunk):
            faces = found.get(k, [])
            if k in errs:
                out.append(Record(str(path), "error", errs[k]))
            elif not faces:
                out.append(Record(str(path), "no_face", f"no face found (detector {predictor.detector}); "
                                  "drop --no-fallback to classify the whole image, or use --detector none "
                                  "if the images are already face crops"))
            else:
                preds = []
                for f in faces:
                    lg, (label, prob, topk) = next(described)
                    preds.append(FacePrediction(label, prob, f.box, topk, f.score, tuple(map(float, lg)), f.source))
                cams = save_gradcams(predictor, faces, preds, overlay_stem(path), cfg.gradcam_dir) \
                    if cfg.gradcam_dir else ()
                text = tuple(describer(f.crop) for f in faces) if describer else ()
                msg = WHOLE_IMAGE if faces[0].source == "whole_image" and predictor.detector != "none" else ""
                out.append(Record(str(path), "ok", msg, None, tuple(preds), cams, text))
            if progress is not None:
                progress(1)
    return out


def overlay_stem(path: str | Path) -> str:
    """A file-name stem unique per input path: a/face.jpg and b/face.jpg give different overlays."""
    import hashlib

    p = Path(path)
    return f"{p.stem}_{hashlib.sha1(str(p.resolve()).encode()).hexdigest()[:8]}"


def save_gradcams(predictor: EmotionPredictor, faces, preds, stem: str, out_dir: Path,
                  frame: int | None = None) -> tuple[str, ...]:
    """One overlay PNG per face, explaining the predicted class on the face crop."""
    from features.images import encode
    from train.gradcam import NoCamLayer, grad_cam, overlay

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (f, p) in enumerate(zip(faces, preds)):
        x = predictor.inputs([f.crop]).to(predictor.device)
        try:
            cam, _ = grad_cam(predictor.model, x, target=predictor.class_names.index(p.label))
        except NoCamLayer as e:
            raise PredictError(f"--gradcam: {e}") from None
        tag = f"_f{frame:06d}" if frame is not None else ""
        which = "whole_image" if f.source == "whole_image" else f"face{i}"  # as face_source says
        path = out_dir / f"{stem}{tag}_{which}_{p.label}.png"
        path.write_bytes(encode(overlay(f.crop, cam)))
        written.append(str(path))
    return tuple(written)


def predict_video(predictor: EmotionPredictor, source: Source, cfg: PredictConfig,
                  progress: Callable[[int], None] | None = None) -> list[Record]:
    from train.video import predict_stream

    name = f"camera:{source.ref}" if source.kind == "camera" else str(source.ref)
    on_faces = None
    if cfg.gradcam_dir is not None:
        stem = f"camera{source.ref}" if source.kind == "camera" else overlay_stem(source.ref)

        def on_faces(n, faces, preds):
            return save_gradcams(predictor, faces, preds, stem, cfg.gradcam_dir, frame=n)
    try:
        frames = predict_stream(predictor, source.ref, window=cfg.window, k=cfg.top_k,
                                out_video=cfg.out_video, max_frames=cfg.max_frames, progress=progress,
                                on_faces=on_faces)
    except PredictError as e:
        return [Record(name, "error", str(e))]
    untimed = "no container timestamps: time = frame / fps" if frames[0].timed_by == "fps" else ""

    def found(fr) -> str:
        if not fr.faces:
            return "no face in this frame"
        return WHOLE_IMAGE if fr.faces[0].face_source == "whole_image" and predictor.detector != "none" else ""

    return [Record(name, "ok" if fr.faces else "no_face",
                   "; ".join(m for m in (found(fr), untimed, fr.note) if m),
                   fr.frame, fr.faces, fr.gradcam, time_s=round(fr.time_s, 4), note=fr.note) for fr in frames]


def run(predictor: EmotionPredictor, inputs: Sequence[str | int | Path], cfg: PredictConfig,
        progress: Callable[[int], None] | None = None) -> list[Record]:
    sources, records = collect(inputs)
    describer = Describer(cfg.caption_model, cfg.vqa_model, predictor.device) if cfg.describe else None
    streams = [s for s in sources if s.kind != "image"]
    if cfg.out_video is not None and not streams:
        raise PredictError("--out-video annotates a video or camera input, and these inputs are images: "
                           "drop --out-video (--gradcam DIR writes an overlay per photo)")
    if cfg.out_video is not None and len(streams) > 1:
        raise PredictError("--out-video takes one video or camera input; got "
                           f"{len(streams)} ({', '.join(str(s.ref) for s in streams)})")
    images = [str(s.ref) for s in sources if s.kind == "image"]
    records += predict_images(predictor, images, cfg, describer, progress)
    for s in streams:
        records += predict_video(predictor, s, cfg, progress)
    return label_from_folders(records, inputs, predictor.class_names)


def label_from_folders(records: Sequence[Record], inputs: Sequence[str | int | Path],
                       class_names: Sequence[str]) -> list[Record]:
    """Records of images under <input folder>/<class name>/... get that class as `true_label`
    (folder names matched to the checkpoint's classes, case-insensitive), so a labelled folder is
    scored (`score_labelled`). Folders whose subfolders are not class names are left alone."""
    from dataclasses import replace

    by_lower = {c.lower(): c for c in class_names}
    out = []
    for r, sub in zip(records, _subfolders(records, inputs)):
        label = by_lower.get(sub[1].lower()) if sub else None
        out.append(replace(r, true_label=label) if label else r)
    return out


def unscored_folders(records: Sequence[Record], inputs: Sequence[str | int | Path],
                     class_names: Sequence[str]) -> dict[str, int]:
    """{subfolder: images} for the subfolders of a labelled input folder (one with at least one
    subfolder named after a class) whose names are not classes of this checkpoint (e.g.
    `happiness/` beside `sad/`): their images are predicted but not scored."""
    classes = {c.lower() for c in class_names}
    subs = [s for s in _subfolders(records, inputs) if s]
    labelled = {root for root, name in subs if name.lower() in classes}
    out: dict[str, int] = {}
    for root, name in subs:
        if root in labelled and name.lower() not in classes:
            key = str(Path(root) / name)
            out[key] = out.get(key, 0) + 1
    return out


def _subfolders(records: Sequence[Record], inputs: Sequence[str | int | Path]) -> list[tuple[str, str] | None]:
    """For each record: (input folder, name of its first subfolder) when it is an image read from
    inside a subfolder of an input folder, else None."""
    roots = [Path(i).resolve() for i in inputs if not isinstance(i, int) and Path(i).is_dir()]
    out: list[tuple[str, str] | None] = []
    for r in records:
        sub = None
        if r.frame is None and r.status != "skipped":
            p = Path(r.source).resolve()
            for root in roots:
                if p.is_relative_to(root) and len(p.relative_to(root).parts) >= 2:
                    sub = (str(root), p.relative_to(root).parts[0])
                    break
        out.append(sub)
    return out


def score_labelled(records: Sequence[Record], class_names: Sequence[str]) -> dict | None:
    """Accuracy and UAR of the labelled records (None when there are none).

    The rule of docs/predict.md: the largest face is the photo's prediction; a photo with no face
    (or that could not be read) counts as wrong; accuracy over all labelled photos; UAR is the
    mean recall over the classes that have photos. Also the face-found rate (detector only, and
    detector or whole-image fallback) and the accuracy on photos where the detector found a face.
    """
    rows = [r for r in records if r.true_label is not None]
    if not rows:
        return None
    pred = [r.faces[0].label if r.faces else None for r in rows]
    truth = [r.true_label for r in rows]
    hit = np.array([p == t for p, t in zip(pred, truth)])
    by_det = np.array([bool(r.faces) and r.faces[0].face_source == "detector" for r in rows])
    recalls = [hit[[t == c for t in truth]].mean() for c in class_names if c in truth]
    return {"photos": len(rows), "accuracy": float(hit.mean()), "uar": float(np.mean(recalls)),
            "face_found": float(by_det.mean()),
            "face_or_fallback": float(np.mean([bool(r.faces) for r in rows])),
            "accuracy_on_found": float(hit[by_det].mean()) if by_det.any() else None,
            "classes": sorted(set(truth))}


# ---- optional description: BLIP caption + BLIP-VQA --------------------------------------------

class Describer:
    """BLIP caption and VQA answers for a face crop, from local weights only.

    Loaded by features.blip, the loader `pipeline caption` uses too (`train` never imports
    `pipeline`); weights resolve through features.hub, which never downloads.
    """

    def __init__(self, caption_model: str = CAPTION_MODEL, vqa_model: str = VQA_MODEL,
                 device: str = "cpu", questions: Sequence[str] = VQA_QUESTIONS, max_new_tokens: int = 30):
        from features.blip import load_blip
        from features.hub import WeightsNotFound

        try:
            cap = load_blip(caption_model, "caption", device, what="BLIP caption model (--describe)")
            vqa = load_blip(vqa_model, "vqa", device, what="BLIP-VQA model (--describe)")
        except WeightsNotFound as e:
            raise PredictError(f"--describe needs BLIP weights: {e}") from None
        self.device = device
        self.questions = tuple(questions)
        self.max_new_tokens = max_new_tokens
        self.cap_path, self.cap_proc, self.cap_model = cap.path, cap.processor, cap.model
        self.vqa_path, self.vqa_proc, self.vqa_model = vqa.path, vqa.processor, vqa.model

    def __call__(self, crop: np.ndarray) -> dict:
        import torch
        from PIL import Image

        from features.images import to_rgb

        im = Image.fromarray(to_rgb(crop))
        with torch.inference_mode():
            inp = self.cap_proc(images=im, return_tensors="pt").to(self.device)
            ids = self.cap_model.generate(**inp, max_new_tokens=self.max_new_tokens)
            caption = self.cap_proc.decode(ids[0], skip_special_tokens=True).strip()
            inp = self.vqa_proc(images=[im] * len(self.questions), text=list(self.questions),
                                return_tensors="pt", padding=True).to(self.device)
            ids = self.vqa_model.generate(**inp, max_new_tokens=10)
            answers = [self.vqa_proc.decode(a, skip_special_tokens=True).strip() for a in ids]
        return {"caption": caption, "vqa": dict(zip(self.questions, answers))}


# ---- output -----------------------------------------------------------------------------------

def to_rows(records: Sequence[Record]) -> list[dict]:
    """One flat row per face (or per face-less / failed input): what CSV and the table show."""
    rows = []
    for r in records:
        base = {"source": r.source, "frame": r.frame, "time_s": r.time_s, "status": r.status,
                "message": r.message, "true_label": r.true_label}
        if not r.faces:
            rows.append(base | {"face": None, "label": None, "prob": None, "box": None, "topk": None,
                                "face_source": None, "face_score": None})
        for i, f in enumerate(r.faces):
            row = base | {"face": i, "label": f.label, "prob": round(f.prob, 4), "box": list(f.box),
                          "topk": [[lab, round(p, 4)] for lab, p in f.topk], "face_source": f.face_source,
                          "face_score": None if f.face_score is None else round(f.face_score, 4)}
            if r.gradcam:
                row["gradcam"] = r.gradcam[i]
            if r.description:
                row["caption"] = r.description[i]["caption"]
                row["vqa"] = r.description[i]["vqa"]
            rows.append(row)
    return rows


def to_json(records: Sequence[Record]) -> str:
    def rec(r: Record) -> dict:
        d = asdict(r)
        for f in d["faces"]:
            f.pop("logits", None)
        return d

    return json.dumps([rec(r) for r in records], indent=2)


def to_csv(records: Sequence[Record]) -> str:
    rows = to_rows(records)
    cols = ["source", "frame", "time_s", "status", "face", "face_source", "face_score", "label", "prob", "box",
            "topk", "message"]
    extra = [c for c in ("gradcam", "caption", "vqa") if any(c in r for r in rows)]
    extra += ["true_label"] if any(r["true_label"] for r in rows) else []
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols + extra, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: _cell(r.get(k)) for k in cols + extra})
    return buf.getvalue()


def _cell(v):
    if v is None:
        return ""
    if isinstance(v, list):
        if v and isinstance(v[0], list):
            return " ".join(f"{a}:{b}" for a, b in v)
        return " ".join(str(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v)
    return v


def summary(records: Sequence[Record]) -> dict:
    """Counts for the summary line; `processed` is what was read (0 -> the CLI exits 2)."""
    faces = sum(len(r.faces) for r in records)
    return {"inputs": sum(r.status != "skipped" for r in records), "faces": faces,
            "whole_image": sum(f.face_source == "whole_image" for r in records for f in r.faces),
            "no_face": sum(r.status == "no_face" for r in records),
            "errors": sum(r.status == "error" for r in records),
            "skipped": sum(r.status == "skipped" for r in records),
            "processed": sum(r.status in ("ok", "no_face") for r in records)}

