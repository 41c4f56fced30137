"""`train predict`: emotions of the faces in images, folders, videos or a camera."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.blip import CAPTION_MODEL, VQA_MODEL


def command(
    inputs: Annotated[list[str], typer.Argument(metavar="INPUT", help="Image files, folders (recursive), video files, "
                                                "or a camera index (0, 1, ...).")],
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Run dir or .safetensors "
                                                    "file (default: the model shipped in train/weights/).")] = None,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Labels shown per face.")] = 3,
    as_json: Annotated[bool, typer.Option("--json", help="JSON on stdout instead of a table.")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV on stdout (one row per face).")] = False,
    gradcam: Annotated[Path | None, typer.Option("--gradcam", help="Folder for Grad-CAM overlay PNGs.")] = None,
    detector: Annotated[str, typer.Option("--detector", help="auto (mtcnn when facenet-pytorch is "
                                          "installed, else haar) | mtcnn | haar | retinaface (needs its "
                                          "weights in --weights-dir) | none (inputs are crops: their "
                                          "central square).")] = "auto",
    weights_dir: Annotated[Path | None, typer.Option("--weights-dir", help="RetinaFace weights folder.")] = None,
    pad: Annotated[float | None, typer.Option("--pad", help="Margin around a detected face, as a fraction "
                                              "of its size per side: > 0 widens, < 0 (above -0.5) tightens "
                                              "(default: tuned per detector).")] = None,
    no_fallback: Annotated[bool, typer.Option("--no-fallback", help="Report 'no face' instead of "
                                              "classifying the central square of a photo without one.")] = False,
    crop: Annotated[str, typer.Option("--crop", help="box: the detected box plus --pad, eyes levelled "
                                      "(default) | landmarks: five landmarks onto FER2013's mean face.")] = "box",
    tta: Annotated[str, typer.Option("--tta", help="flip: average each face with its mirror image "
                                     "(default) | none: classify each face once.")] = "flip",
    window: Annotated[int, typer.Option("--window", min=1, help="Video/camera: frames whose logits "
                                        "are averaged (temporal smoothing).")] = 16,
    out_video: Annotated[Path | None, typer.Option("--out-video", help="Annotated output video "
                                                   "(.mp4 mp4v or .avi MJPG).")] = None,
    max_frames: Annotated[int | None, typer.Option("--max-frames", min=1, help="Stop a video or "
                                                   "camera after this many frames.")] = None,
    describe: Annotated[bool, typer.Option("--describe", help="Add a BLIP caption and BLIP-VQA answers "
                                           "per face (needs their weights locally).")] = False,
    caption_model: Annotated[str, typer.Option("--caption-model", help="BLIP caption id or folder.")] = CAPTION_MODEL,
    vqa_model: Annotated[str, typer.Option("--vqa-model", help="BLIP-VQA id or folder.")] = VQA_MODEL,
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one) | cpu | "
                                        "cuda[:N]")] = "auto",
    caption: Annotated[str | None, typer.Option("--caption", help="Caption-fusing models (miniaffectgpt): "
                                                "this caption for every face (default: BLIP captions each face).")] = None,
    text_encoder: Annotated[str | None, typer.Option("--text-encoder", help="distilbert | minilm: embeds the "
                                                     "caption (default: the one named by the run's feature file).")] = None,
) -> None:
    """Detect faces, classify each with the checkpoint's own preprocessing, show top-k."""
    from rich.console import Console
    from rich.progress import Progress, TextColumn, TimeElapsedColumn

    from train.api import EmotionPredictor, PredictError, default_checkpoint
    from train.predict import PredictConfig, run, score_labelled, summary, to_csv, to_json, unscored_folders

    err = Console(stderr=True, soft_wrap=True)  # messages stay whole lines (grep-able)
    if as_json and as_csv:
        err.print("train predict: choose one of --json and --csv")
        raise typer.Exit(2)
    from train.api import check_crop_options

    try:  # named as the user typed them, before any checkpoint is read
        check_crop_options(pad=pad, crop=crop, tta=tta, flag="--")
    except PredictError as e:
        err.print(f"train predict: {e}", markup=False, highlight=False)
        raise typer.Exit(2)
    from features.manifest import check_writable

    if gradcam is not None and gradcam.exists() and not gradcam.is_dir():
        err.print(f"train predict: --gradcam {gradcam} is a file; pass a folder for the overlays",
                  markup=False, highlight=False)
        raise typer.Exit(2)
    if gradcam is not None:  # outputs are refused before any model is loaded or input read
        check_writable(gradcam / "overlay.png", "--gradcam")
    if out_video is not None:
        check_writable(out_video, "--out-video")
    try:
        from features.device import resolve_device

        predictor = EmotionPredictor.from_checkpoint(checkpoint, detector=detector,
                                                     device=resolve_device(device), pad=pad,
                                                     weights_dir=weights_dir, fallback=not no_fallback,
                                                     caption=caption, caption_model=caption_model,
                                                     text_encoder=text_encoder, tta=tta, crop=crop)
        if predictor.notice:
            err.print(f"[yellow]note:[/] {predictor.notice}")
        if no_fallback and predictor.detector == "none":
            err.print("[yellow]note:[/] --no-fallback does nothing with --detector none (every input is classified)")
        if crop == "landmarks" and predictor.detector in ("haar", "none"):
            err.print(f"[yellow]note:[/] --crop landmarks needs five landmarks (mtcnn, retinaface); with --detector "
                      f"{predictor.detector} faces are cropped as boxes")
        cfg = PredictConfig(top_k=top_k, gradcam_dir=gradcam, window=window, out_video=out_video,
                            describe=describe, caption_model=caption_model, vqa_model=vqa_model,
                            max_frames=max_frames)
        with Progress(TextColumn("predict {task.completed} inputs/frames"), TimeElapsedColumn(),
                      console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("predict", total=None)
            records = run(predictor, inputs, cfg, progress=lambda n: bar.advance(task, n))
    except PredictError as e:
        err.print(f"train predict: {e}", markup=False, highlight=False)
        raise typer.Exit(2)
    s = summary(records)
    failed = [r for r in records if r.status == "error"]
    if s["processed"] == 0 and len(failed) == 1 and not as_json and not as_csv:
        # one input, and it could not be read: one line, not a table and a summary around it
        err.print(f"train predict: {failed[0].source}: {_reason(failed[0])}", markup=False, highlight=False)
        raise typer.Exit(2)
    if as_json:
        typer.echo(to_json(records))
    elif as_csv:
        typer.echo(to_csv(records), nl=False)
    else:
        _table(records, top_k)
    from rich.markup import escape

    for r in records:
        if r.status == "error":  # counted as errors in the summary below
            err.print(f"[yellow]error[/] {escape(r.source)}: {escape(_reason(r))}", highlight=False)
        elif r.note:
            typer.echo(f"note: {r.source}: {r.note}", err=True)
    cams = sum(len(r.gradcam) for r in records)
    whole = (f" ({_n(s['whole_image'], 'central square')}: --detector none)" if predictor.detector == "none" else
             f" ({s['whole_image']} face_source=whole_image: no face found, central square classified)"
             if s["whole_image"] else "")
    err.print(f"{_n(s['inputs'], 'input/frame', 'inputs/frames')}, {_n(s['faces'], 'face')}{whole}, "
              f"{s['no_face']} without a face, {_n(s['errors'], 'error')}"
              + (f", {s['skipped']} files skipped by extension" if s["skipped"] else "")
              + f"; model {Path(str(checkpoint or default_checkpoint())).stem}, detector {predictor.detector}, "
                f"TTA {predictor.tta}"
              + (f"; annotated video: {out_video}" if out_video and out_video.is_file() else "")
              + (f"; {_n(cams, 'Grad-CAM overlay')} in {gradcam}" if gradcam else ""))
    for folder, n in unscored_folders(records, inputs, predictor.class_names).items():
        err.print(f"[yellow]note:[/] {escape(folder)}/ ({_n(n, 'image')}) is not a class of this model "
                  f"({', '.join(predictor.class_names)}): predicted, not scored; rename it to a class to score it",
                  highlight=False)
    scored = score_labelled(records, predictor.class_names)
    if scored:
        found = "" if scored["accuracy_on_found"] is None else f", accuracy on found faces {scored['accuracy_on_found']:.1%}"
        err.print(f"labelled folders ({_n(scored['photos'], 'photo')}, classes from folder names): accuracy "
                  f"{scored['accuracy']:.1%}, UAR {scored['uar']:.1%}, face found {scored['face_found']:.1%}{found}")
    if s["processed"] == 0:
        raise typer.Exit(2)


def _n(n: int, one: str, many: str | None = None) -> str:
    return f"{n} {one if n == 1 else many or one + 's'}"


def _reason(record) -> str:
    """The record's message without the path it already starts with (the line names it once)."""
    head = f"{record.source}: "
    return record.message[len(head):] if record.message.startswith(head) else record.message


def _table(records, top_k: int) -> None:
    import sys

    from rich.console import Console
    from rich.table import Table

    shown = [r for r in records if r.status not in ("error", "skipped")]
    frames = any(r.frame is not None for r in shown)  # still photos need no frame column
    k = max((len(f.topk) for r in shown for f in r.faces), default=top_k)  # a model has <= C classes
    t = Table()
    cols = ["input", *(["frame", "time (s)"] if frames else []), "face", "box (x,y,w,h)", "face score", "label", "prob",
            f"top-{k}"]
    for col in cols:
        t.add_column(col, overflow="fold")
    for r in shown:
        frame = (["", ""] if r.frame is None else [str(r.frame), f"{r.time_s:.2f}"]) if frames else []
        if not r.faces:
            if r.frame is None:  # the way out that JSON/CSV's message gives
                hint = " (drop --no-fallback to classify the central square)" if r.status == "no_face" else ""
                t.add_row(r.source, *frame, "", "", "", f"[dim]no face{hint}[/]", "", "")
            continue
        for i, f in enumerate(r.faces):
            # a photo without a detected face is classified whole: the table says so, as JSON/CSV do
            face = f"{i} (whole image)" if f.face_source == "whole_image" else str(i)
            score = "" if f.face_score is None else f"{f.face_score:.2f}"  # low: maybe not a face
            t.add_row(r.source, *frame, face, ",".join(map(str, f.box)), score, f.label, f"{f.prob:.3f}",
                      " ".join(f"{lab}:{p:.2f}" for lab, p in f.topk))
    # into a file or a pipe: no 80-column folding of paths and numbers
    Console(width=None if sys.stdout.isatty() else 10_000).print(t)
