"""`train serve`: a local web page for photos, the browser's webcam and short videos."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    checkpoint: Annotated[Path | None, typer.Option("--checkpoint", "-c", help="Run dir or .safetensors "
                                                    "file (default: the model shipped in train/weights/).")] = None,
    host: Annotated[str, typer.Option("--host", help="Address to bind. 127.0.0.1 keeps the page on this "
                                      "machine; 0.0.0.0 opens it to your network.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", "-p", min=1, max=65535, help="TCP port.")] = 7860,
    share: Annotated[bool, typer.Option("--share/--no-share", help="Ask Gradio for a public share link "
                                        "(off by default; needs the internet).")] = False,
    top_k: Annotated[int, typer.Option("--top-k", "-k", min=1, help="Probabilities shown per face.")] = 3,
    detector: Annotated[str, typer.Option("--detector", help="auto | mtcnn | haar | retinaface | none, as "
                                          "in `train predict`.")] = "auto",
    weights_dir: Annotated[Path | None, typer.Option("--weights-dir", help="RetinaFace weights folder, as "
                                                     "in `train predict`.")] = None,
    window: Annotated[int, typer.Option("--window", min=1, help="Video: frames whose logits are averaged.")] = 16,
    gradcam: Annotated[bool, typer.Option("--gradcam/--no-gradcam", help="Grad-CAM overlay per face.")] = True,
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one) | cpu | "
                                        "cuda[:N]")] = "auto",
    stop_after: Annotated[float | None, typer.Option("--stop-after", min=1,
                                                     help="Stop after this many seconds (a demo or a "
                                                          "test; default: run until Ctrl-C).")] = None,
) -> None:
    """A local web page: photos, webcam or a short video in; boxed faces, top-k bars, Grad-CAM out.

    Same model and answers as `train predict`; the page is on http://127.0.0.1:7860 by default."""
    import importlib.util

    from rich.console import Console

    err = Console(stderr=True, soft_wrap=True)
    from train.serve import SERVE_INSTALL

    if importlib.util.find_spec("gradio") is None:
        err.print(f"train serve: needs Gradio, which is not installed: {SERVE_INSTALL}")
        raise typer.Exit(2)
    from train.api import EmotionPredictor, PredictError
    from train.serve import Analyser, serve

    from features.device import DeviceError, resolve_device

    try:
        predictor = EmotionPredictor.from_checkpoint(checkpoint, detector=detector, device=resolve_device(device),
                                                     weights_dir=weights_dir)
    except (PredictError, DeviceError) as e:
        err.print(f"train serve: {e}")
        raise typer.Exit(2)
    if getattr(predictor, "notice", ""):
        err.print(f"[yellow]note:[/] {predictor.notice}")
    if host not in ("127.0.0.1", "localhost", "::1"):
        err.print(f"[yellow]note:[/] --host {host}: the page is reachable from other machines")
    try:
        # Gradio's own banner points at `share=True` in Python; ours names the flag (with --share
        # Gradio's banner stays: it carries the public link)
        serve(Analyser(predictor, k=top_k, window=window, gradcam=gradcam), host=host, port=port, share=share,
              stop_after=stop_after, quiet=not share,
              announce=lambda url: err.print(f"serving on {url} (Ctrl-C stops it; --share asks Gradio for a "
                                             "public link)", highlight=False))
    except OSError as e:
        err.print(f"train serve: cannot serve on {host}:{port} ({e}); pick another --port")
        raise typer.Exit(2)
