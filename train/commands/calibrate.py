"""`train calibrate`: logit adjustment chosen on validation rows; writes a new checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def command(
    checkpoint: Annotated[Path, typer.Option("--checkpoint", "-c", help="Run dir or .safetensors file.")],
    out: Annotated[Path, typer.Option("--out", help="Folder for the adjusted best.safetensors, "
                                      "calibrate.json and calibrate.png.")],
    val: Annotated[Optional[Path], typer.Option("--val", help="Manifest whose split=val rows choose tau "
                                                "(default: the one the checkpoint was validated on).")] = None,
    train_manifest: Annotated[Optional[Path], typer.Option("--train-manifest", help="Manifest whose "
                                                           "split=train rows give the class prior "
                                                           "(default: the one it was trained on).")] = None,
    max_acc_drop: Annotated[float, typer.Option("--max-acc-drop", help="Validation accuracy points "
                                                "that may be traded for UAR.")] = 0.5,
    tau_max: Annotated[float, typer.Option("--tau-max")] = 1.5,
    tau_step: Annotated[float, typer.Option("--tau-step")] = 0.05,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one) | cpu | "
                                        "cuda[:N]")] = "auto",
) -> None:
    """Logit adjustment (logits - tau * log prior) with tau chosen on validation rows: more
    recall on rare classes (UAR) for a bounded loss of accuracy. The test split is not read."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from train.calibrate import CalibrateConfig, calibrate
    from train.checkpoint import CheckpointError
    from train.evaluate import EvalError

    from features.device import resolve_device
    from features.manifest import check_same_set

    console = Console(stderr=True, soft_wrap=True)
    device = resolve_device(device)
    check_same_set([val, train_manifest])
    try:
        cfg = CalibrateConfig(max_acc_drop=max_acc_drop, tau_max=tau_max, tau_step=tau_step,
                              batch_size=batch_size, device=device)
        with Progress(TextColumn("val logits"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("val", total=None)
            rep = calibrate(checkpoint, val, out, cfg, train_manifest, progress=lambda n: bar.advance(task, n))
    except (EvalError, CheckpointError) as e:
        console.print(f"train calibrate: {e}")
        raise typer.Exit(2) from None
    b, a = rep["logit_adjustment"]["val_before"], rep["logit_adjustment"]["val_after"]
    typer.echo(f"tau = {rep['chosen']['tau']:g}: val accuracy {100 * b['acc']:.2f} -> {100 * a['acc']:.2f} %, "
               f"UAR {100 * b['uar']:.2f} -> {100 * a['uar']:.2f} %, macro-F1 {100 * b['f1']:.2f} -> "
               f"{100 * a['f1']:.2f} %")
    typer.echo(f"wrote {out}/best.safetensors, calibrate.json and calibrate.png ({rep['seconds']} s)")
