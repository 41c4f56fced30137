"""`make bench-photos`: real photos through the photo path (decode -> detect -> crop -> classify).

Three measurements, all with one checkpoint (the shipped default unless --checkpoint):

1. **Canvas round trip.** FER2013 test faces (a seeded sample of `manifests/fer_test.parquet`)
   are pasted into larger canvases (random face size, position and background: flat grey, a
   grey gradient or blurred noise; seed --seed) and run through detect -> crop -> classify; the
   accuracy is compared with classifying the original 48x48 crops. A face the detector misses
   counts as wrong. Reported per detector and crop margin (`pad`).
2. **Margin on wild_dev.** `../shared/data/wild_dev/wild_dev.parquet` (1,341 labelled photos;
   develop and report only, never train): detection once per detector, then accuracy / UAR per
   pad, and detection + crop ms per photo at 1 thread; then MTCNN's stage thresholds swept
   (found rate, accuracy, ms) on wild_dev and on the canvases.
3. **`train predict` on wild_dev**, written as a labelled folder (<class>/<sha1>.jpg) and run
   through `train.predict.run` (the CLI's engine) for each detector, with and without the
   whole-image fallback, and with no detector: accuracy, UAR, face-found rate, accuracy on found
   faces, photos/s.

Scoring (wild_dev's PROVENANCE.md): the largest face is the photo's prediction, no face = wrong,
accuracy over all photos, UAR = mean recall over the 7 classes.

    python benchmarks/bench_photos.py --wild ../shared/data/wild_dev/wild_dev.parquet \\
        --fer-test manifests/fer_test.parquet --out docs/results/photos
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # so `benchmarks.wild_folder` imports when run as a script
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
DETECTORS = ("mtcnn", "haar")
# crop variants: MTCNN's five landmarks onto FER2013's template (features.faces.FER_TEMPLATE), or
# the padded box with levelled eyes (all Haar can do)
VARIANTS = (("mtcnn", "landmarks"), ("mtcnn", "box"), ("haar", "box"))
PADS = (-0.1, -0.05, 0.0, 0.05, 0.1, 0.2)  # negative zooms in
# The two peers on the held-out half of the same photo collection (not on wild_dev itself).
PEERS = {"fer + Haar (held-out half)": 0.419, "fer + MTCNN (held-out half)": 0.473}


def machine() -> dict:
    cpu = "unknown"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "load_average_1_5_15":
            [round(x, 2) for x in os.getloadavg()], "python": platform.python_version(), "gpu": "none used"}


def acc_uar(pred: list, truth: list, classes) -> tuple[float, float]:
    hit = np.array([p == t for p, t in zip(pred, truth)])
    recalls = [hit[[t == c for t in truth]].mean() for c in classes if c in truth]
    return float(hit.mean()), float(np.mean(recalls))


def labels_of(predictor, crops: list[np.ndarray]) -> list[str]:
    lg = predictor.logits(crops)
    return [predictor.class_names[i] for i in lg.argmax(1)] if len(crops) else []


def crops_at(imgs, found, pad: float, how: str) -> tuple[list[np.ndarray], list[int]]:
    from features.faces import FER_TEMPLATE, crop_face

    template = FER_TEMPLATE if how == "landmarks" else None
    idx = [i for i, fs in enumerate(found) if fs]
    return [crop_face(imgs[i], found[i][0], pad=pad, align=True, template=template) for i in idx], idx


def predict_with_misses(predictor, imgs, found, pad: float, n: int, how: str) -> list:
    crops, idx = crops_at(imgs, found, pad, how)
    pred: list = [None] * n
    for i, lab in zip(idx, labels_of(predictor, crops)):
        pred[i] = lab
    return pred


def detect_all(imgs, detector: str, min_face: int) -> tuple[list, float]:
    from features.faces import detect_faces_batch

    t = time.perf_counter()
    found = []
    for i in range(0, len(imgs), 32):  # the chunk train predict uses
        found += detect_faces_batch(imgs[i:i + 32], backend=detector, min_size=min_face)
    return found, time.perf_counter() - t


# ---- 1. canvas round trip --------------------------------------------------------------------

def canvases(faces: list[np.ndarray], seed: int) -> list[np.ndarray]:
    """Each 48x48 grey face resized to 64-160 px and pasted at a random place of a canvas 1.6-3x
    its size, on a flat, gradient or blurred-noise grey background (seeded)."""
    import cv2

    rng = np.random.default_rng(seed)
    out = []
    for f in faces:
        s = int(rng.integers(64, 161))
        H, W = (int(s * rng.uniform(1.6, 3.0)) for _ in range(2))
        kind = rng.integers(3)
        if kind == 0:
            bg = np.full((H, W), rng.integers(20, 236), np.float32)
        elif kind == 1:
            a, b = rng.integers(0, 256, 2)
            bg = np.tile(np.linspace(a, b, W, dtype=np.float32), (H, 1))
        else:
            bg = cv2.GaussianBlur(rng.integers(0, 256, (H, W)).astype(np.float32), (0, 0), rng.uniform(2, 8))
        y, x = int(rng.integers(0, H - s + 1)), int(rng.integers(0, W - s + 1))
        bg[y:y + s, x:x + s] = cv2.resize(f, (s, s), interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(bg, 0, 255).astype(np.uint8))
    return out


def fer_faces(fer_test: Path, n: int, seed: int) -> tuple[list[np.ndarray], list[str]]:
    """A seeded sample of n FER2013 test faces (48x48 grey) and their labels."""
    import pyarrow.parquet as pq

    from features.images import decode

    t = pq.read_table(fer_test, columns=["image", "label"])
    pick = np.sort(np.random.default_rng(seed).choice(t.num_rows, size=min(n, t.num_rows), replace=False))
    t = t.take(pick)
    return [decode(b)[0] for b in t.column("image").to_pylist()], t.column("label").to_pylist()


def canvas_set(fer_test: Path, n: int, seed: int) -> tuple[list[np.ndarray], list[str], bool]:
    """The canvas round trip's images and labels (no fallback: a missed face is wrong)."""
    faces, truth = fer_faces(fer_test, n, seed)
    return canvases(faces, seed), truth, False


def canvas_bench(predictor_of, fer_test: Path, n: int, seed: int, min_face: int) -> dict:

    faces, truth = fer_faces(fer_test, n, seed)
    base = predictor_of("none")
    classes = base.class_names
    direct_pred = labels_of(base, faces)
    direct, direct_uar = acc_uar(direct_pred, truth, classes)
    imgs = canvases(faces, seed)
    res = {"rows": len(faces), "seed": seed, "direct_accuracy": direct, "direct_uar": direct_uar, "detectors": {}}
    found_of = {det: detect_all(imgs, det, min_face)[0] for det in DETECTORS}
    for det, how in VARIANTS:
        p = predictor_of(det)
        found = found_of[det]
        rate = float(np.mean([bool(f) for f in found]))
        hit = [bool(f) for f in found]
        on_found = [t for t, h in zip(truth, hit) if h]
        direct_found = acc_uar([d for d, h in zip(direct_pred, hit) if h], on_found, classes)[0]
        per_pad = {}
        for pad in PADS:
            pred = predict_with_misses(p, imgs, found, pad, len(imgs), how)
            acc, uar = acc_uar(pred, truth, classes)
            acc_found = acc_uar([q for q, h in zip(pred, hit) if h], on_found, classes)[0]
            # loss on all rows (a miss is wrong) and on the found rows only (the crop's own cost)
            per_pad[str(pad)] = {"accuracy": acc, "uar": uar, "loss_points": 100 * (direct - acc),
                                 "loss_points_on_found": 100 * (direct_found - acc_found)}
        det = f"{det}/{how}"
        res["detectors"][det] = {"face_found": rate, "direct_accuracy_on_found": direct_found, "pads": per_pad}
        print(f"canvas {det}: found {rate:.1%}; " + ", ".join(
            f"pad {k}: {v['accuracy']:.1%}" for k, v in per_pad.items()) + f" (direct {direct:.1%})", flush=True)
    return res


# ---- 2. margin and speed on wild_dev --------------------------------------------------------

def margin_bench(predictor_of, imgs, truth, min_face: int) -> dict:
    from features.faces import crop_face

    out, found_of = {}, {}
    for det in DETECTORS:
        detect_all(imgs[:8], det, min_face)  # warm-up: weights loaded, first-call allocations done
        found_of[det] = detect_all(imgs, det, min_face)
    for det, how in VARIANTS:
        p = predictor_of(det)
        found, secs = found_of[det]
        t = time.perf_counter()
        for im, fs in zip(imgs, found):
            if fs:
                crop_face(im, fs[0], pad=p.pad, align=True, **({} if how == "landmarks" else {"template": None}))
        crop_s = time.perf_counter() - t
        per_pad = {}
        for pad in PADS:
            pred = predict_with_misses(p, imgs, found, pad, len(imgs), how)
            acc, uar = acc_uar(pred, truth, p.class_names)
            per_pad[str(pad)] = {"accuracy": acc, "uar": uar}
        det = f"{det}/{how}"
        out[det] = {"face_found": float(np.mean([bool(f) for f in found])),
                    "ms_detect_per_photo": 1000 * secs / len(imgs), "ms_crop_per_photo": 1000 * crop_s / len(imgs),
                    "pads": per_pad}
        print(f"wild_dev {det}: found {out[det]['face_found']:.1%}, {out[det]['ms_detect_per_photo']:.1f} ms detect "
              f"+ {out[det]['ms_crop_per_photo']:.2f} ms crop; " + ", ".join(
                  f"pad {k}: {v['accuracy']:.1%}/{v['uar']:.1%}" for k, v in per_pad.items()), flush=True)
    return out


# ---- 2b. MTCNN stage thresholds ---------------------------------------------------------------

# P-net / R-net / O-net thresholds of MTCNN's second pass over the images where the first pass
# (facenet-pytorch's 0.6 / 0.7 / 0.7) found no face; None: no second pass
THRESHOLD_SWEEP = (None, (0.5, 0.6, 0.6), (0.4, 0.5, 0.5), (0.3, 0.4, 0.5), (0.2, 0.3, 0.5))


def threshold_bench(predictor, sets: dict, min_face: int) -> list[dict]:
    """For each THRESHOLD_SWEEP second-pass setting: face-found rate, accuracy and UAR of the largest face
    (crop as `train predict` crops it; no face = the central square on photos, wrong on canvases),
    detection ms per image at 1 thread, on each set of `sets` ({name: (images, truth, fallback)})."""
    import features.faces as faces
    from train.api import central_square

    keep, keep_clahe, rows = faces.MTCNN_RETRY_THRESHOLDS, faces.MTCNN_CLAHE_PASS, []
    # every setting of the sweep with the CLAHE third pass, then the default without it (its worth)
    settings = [(th, keep_clahe) for th in THRESHOLD_SWEEP] + [(keep, None)]
    try:
        for th, clahe in settings:
            faces.MTCNN_RETRY_THRESHOLDS, faces.MTCNN_CLAHE_PASS = th, clahe
            row = {"retry_thresholds": None if th is None else list(th),
                   "clahe_pass": clahe is not None and th is not None}
            for name, (imgs, truth, fallback) in sets.items():
                found, secs = detect_all(imgs, "mtcnn", min_face)
                template = faces.FER_TEMPLATE if predictor.crop == "landmarks" else None
                crops = [faces.crop_face(im, fs[0], pad=predictor.pad, align=True, template=template) if fs else
                         (central_square(im).crop if fallback else None) for im, fs in zip(imgs, found)]
                idx = [i for i, c in enumerate(crops) if c is not None]
                pred: list = [None] * len(imgs)
                for i, lab in zip(idx, labels_of(predictor, [crops[i] for i in idx])):
                    pred[i] = lab
                acc, uar = acc_uar(pred, truth, predictor.class_names)
                row[name] = {"face_found": float(np.mean([bool(f) for f in found])), "accuracy": acc, "uar": uar,
                             "ms_detect_per_image": 1000 * secs / len(imgs)}
            rows.append(row)
            print(f"mtcnn second pass {th}, CLAHE pass {row['clahe_pass']}: " + "; ".join(
                f"{n} found {r['face_found']:.1%}, {r['accuracy']:.1%}/{r['uar']:.1%}, {r['ms_detect_per_image']:.1f} ms"
                for n, r in row.items() if isinstance(r, dict)), flush=True)
    finally:
        faces.MTCNN_RETRY_THRESHOLDS, faces.MTCNN_CLAHE_PASS = keep, keep_clahe
    return rows


# ---- 3. train predict on wild_dev -----------------------------------------------------------

def predict_bench(checkpoint, folder: Path, n: int, pads: dict) -> list[dict]:
    """`train predict`'s engine on the labelled folder, per detector with the fallback; the
    no-fallback row of a detector is the same run with its whole-image records counted as misses
    (exactly what --no-fallback reports: the detector's output is the same)."""
    from dataclasses import replace

    from train.api import EmotionPredictor
    from train.predict import PredictConfig, run, score_labelled

    rows = []
    for det in ("mtcnn", "haar", "none"):
        p = EmotionPredictor.from_checkpoint(checkpoint, detector=det, fallback=True, pad=pads.get(det))
        t = time.perf_counter()
        records = run(p, [str(folder)], PredictConfig())
        secs = time.perf_counter() - t
        strict = [replace(r, faces=tuple(f for f in r.faces if f.face_source == "detector")) for r in records]
        for fallback, recs in ((True, records), (False, strict)) if det != "none" else ((True, records),):
            s = score_labelled(recs, p.class_names)
            name = f"{det} + whole-image fallback" if fallback and det != "none" else (
                "none (whole photo, central square)" if det == "none" else f"{det}, no fallback")
            rows.append({"config": name, "detector": det, "fallback": fallback, "pad": p.pad,
                         "photos": s["photos"], "accuracy": s["accuracy"], "uar": s["uar"],
                         "face_found": s["face_found"] if det != "none" else None,
                         "face_or_fallback": s["face_or_fallback"], "accuracy_on_found": s["accuracy_on_found"]
                         if det != "none" else None, "photos_per_s": n / secs})
            print(f"train predict {name}: accuracy {s['accuracy']:.1%}, UAR {s['uar']:.1%}, found "
                  f"{s['face_found']:.1%}, {n / secs:.1f} photos/s", flush=True)
    return rows


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"# Photos: wild_dev through `train predict` ({res['date']})", "",
             f"Checkpoint `{res['checkpoint']}`; {m['cpu']}, {m['cores']} cores, no GPU, torch at 1 thread "
             f"for the timings (load average at the start {m['load_average_1_5_15']}).",
             f"Reproduce: `{res['command']}`.", "",
             "| config | pad | accuracy | UAR | face found (detector) | face or fallback | accuracy on found | photos/s |",
             "|---|---|---|---|---|---|---|---|"]
    for r in res["predict"]:
        lines.append(f"| {r['config']} | {r['pad']} | {_pct(r['accuracy'])} | {_pct(r['uar'])} | {_pct(r['face_found'])} "
                     f"| {_pct(r['face_or_fallback'])} | {_pct(r['accuracy_on_found'])} | {r['photos_per_s']:.1f} |")
    for name, acc in PEERS.items():
        lines.append(f"| peer: {name} | | {_pct(acc)} | | | | | |")
    lines += ["", "Detection + crop at 1 thread, wild_dev (largest face of each photo):", "",
              "| detector | face found | ms detect / photo | ms crop / photo |", "|---|---|---|---|"]
    for det, d in res["margin"].items():
        lines.append(f"| {det} | {_pct(d['face_found'])} | {d['ms_detect_per_photo']:.1f} | {d['ms_crop_per_photo']:.2f} |")
    lines += ["", "Crop margin (pad, fraction of the box on each side) on wild_dev, accuracy / UAR:", "",
              "| detector | " + " | ".join(PADS_STR) + " |", "|---" * (len(PADS) + 1) + "|"]
    for det, d in res["margin"].items():
        lines.append(f"| {det} | " + " | ".join(f"{_pct(d['pads'][p]['accuracy'])} / {_pct(d['pads'][p]['uar'])}"
                                               for p in PADS_STR) + " |")
    if res.get("thresholds"):
        from features.faces import MTCNN_RETRY_THRESHOLDS, MTCNN_THRESHOLDS

        lines += ["", f"MTCNN's second pass: the images where the first pass ({' / '.join(map(str, MTCNN_THRESHOLDS))}) "
                  "found no face run once more at lower P-net / R-net / O-net thresholds (the default second "
                  f"pass: {' / '.join(map(str, MTCNN_RETRY_THRESHOLDS or ())) or 'none'}), then those still "
                  "without one on a contrast-equalised (CLAHE) copy at the same thresholds (the third pass; "
                  "the last row goes without it); largest face cropped as "
                  "`train predict` crops it, mtcnn + fallback on wild_dev, a missed face wrong on the canvases "
                  "(1 thread):", "",
                  "| second pass | wild_dev found | wild_dev accuracy / UAR | ms / photo | canvas found | canvas accuracy | ms / canvas |",
                  "|---|---|---|---|---|---|---|"]
        for r in res["thresholds"]:
            w, c = r["wild_dev"], r.get("canvas")
            th = r["retry_thresholds"]
            name = "none" if th is None else " / ".join(map(str, th))
            name += "" if r.get("clahe_pass", True) else ", no CLAHE pass"
            lines.append(f"| {name} | {_pct(w['face_found'])} | {_pct(w['accuracy'])} / "
                         f"{_pct(w['uar'])} | {w['ms_detect_per_image']:.1f} | "
                         + (f"{_pct(c['face_found'])} | {_pct(c['accuracy'])} | {c['ms_detect_per_image']:.1f} |"
                            if c else "- | - | - |"))
    c = res.get("canvas")
    if c:
        lines += ["", f"Canvas round trip: {c['rows']} FER2013 test faces (seed {c['seed']}) pasted into larger "
                  f"canvases; direct crops score {_pct(c['direct_accuracy'])}. Accuracy through detect -> crop -> "
                  "classify (a missed face is wrong), the loss in points against the direct crops, and the "
                  "loss on the faces the detector found (the crop's own cost):", "",
                  "| detector/crop | face found | " + " | ".join(PADS_STR) + " |", "|---" * (len(PADS) + 2) + "|"]
        for det, d in c["detectors"].items():
            lines.append(f"| {det} | {_pct(d['face_found'])} | " + " | ".join(
                f"{_pct(d['pads'][p]['accuracy'])} (loss {d['pads'][p]['loss_points']:+.1f}; on found "
                f"{d['pads'][p].get('loss_points_on_found', float('nan')):+.1f})" for p in PADS_STR) + " |")
    return "\n".join(lines) + "\n"


PADS_STR = [str(p) for p in PADS]


@app.command()
def main(
    wild: Annotated[Path, typer.Option(help="wild_dev.parquet")] = Path("../shared/data/wild_dev/wild_dev.parquet"),
    fer_test: Annotated[Path, typer.Option(help="FER2013 test manifest (canvas round trip)")] =
    Path("manifests/fer_test.parquet"),
    checkpoint: Annotated[Path | None, typer.Option(help="default: the shipped model")] = None,
    canvas_n: Annotated[int, typer.Option(help="FER2013 test faces in the canvas round trip (0: skip)")] = 500,
    seed: int = 0,
    limit: Annotated[int, typer.Option(help="first N wild_dev photos only (a smoke run; 0: all)")] = 0,
    min_face: int = 24,
    out: Annotated[Path, typer.Option(help="folder for photos.json and photos.md")] = Path("docs/results/photos"),
) -> None:
    import cv2
    import pyarrow.parquet as pq
    import torch

    from train.api import EmotionPredictor, default_checkpoint, load_image

    for path, what in ((wild, "wild_dev.parquet (../shared/data/wild_dev)"), (fer_test, "the FER2013 test "
                                                                                       "manifest (make manifests-fer)")):
        if not path.is_file() and (path != fer_test or canvas_n):
            print(f"error: {path} not found: {what}", file=sys.stderr)
            raise typer.Exit(2)
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    ckpt = checkpoint or default_checkpoint()
    cache: dict = {}

    def predictor_of(det: str) -> EmotionPredictor:
        if det not in cache:
            cache[det] = EmotionPredictor.from_checkpoint(ckpt, detector=det, fallback=False)
        return cache[det]

    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
           "checkpoint": str(Path(ckpt).resolve().relative_to(ROOT)) if Path(ckpt).resolve().is_relative_to(ROOT)
           else str(ckpt),
           "command": "make bench-photos  # python benchmarks/bench_photos.py " + " ".join(sys.argv[1:]),
           "scoring": "largest face per photo; no face = wrong; accuracy over all photos; UAR over 7 classes"}
    if canvas_n:
        res["canvas"] = canvas_bench(predictor_of, fer_test, canvas_n, seed, min_face)
    t = pq.read_table(wild, columns=["image", "label"])
    t = t.slice(0, limit) if limit else t
    blobs, truth = (t.column(c).to_pylist() for c in ("image", "label"))
    imgs = [load_image(b) for b in blobs]
    res["margin"] = margin_bench(predictor_of, imgs, truth, min_face)
    sets = {"wild_dev": (imgs, truth, True)}
    if canvas_n:
        sets["canvas"] = canvas_set(fer_test, canvas_n, seed)
    res["thresholds"] = threshold_bench(predictor_of("mtcnn"), sets, min_face)
    with tempfile.TemporaryDirectory() as tmp:
        from benchmarks.wild_folder import write_folder

        write_folder(wild, Path(tmp), limit)  # the labelled folder `make wild-folder` writes
        # each detector at the margin with the best wild_dev accuracy above (tuned here, on wild_dev)
        best = {det: float(max(res["margin"][f"{det}/{how}"]["pads"].items(), key=lambda kv: kv[1]["accuracy"])[0])
                for det, how in (("mtcnn", "box"), ("haar", "box"))}  # box: train predict's crop
        res["pads_chosen_on_wild_dev"] = best
        res["predict"] = predict_bench(ckpt, Path(tmp), len(blobs), best)
    out.mkdir(parents=True, exist_ok=True)
    (out / "photos.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "photos.md").write_text(markdown(res))
    print(f"wrote {out / 'photos.json'} and {out / 'photos.md'}")


if __name__ == "__main__":
    app()
