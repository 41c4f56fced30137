"""`train eval`: score a checkpoint on a manifest's test rows; report.json, report.md and plots."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def command(
    ctx: typer.Context,
    checkpoint: Annotated[list[Path], typer.Option(
        "--checkpoint", "-c", help="Run dir or .safetensors file written by `train run`; repeat it to "
        "score an ensemble (mean of the members' probabilities; each member is reported too).")],
    manifest: Annotated[Path, typer.Option("--manifest", "-m", help="Manifest whose test rows are scored.")],
    tta: Annotated[str, typer.Option("--tta", help="Test-time augmentation: none | flip | tencrop "
                                     "(reported beside the plain number).")] = "none",
    out: Annotated[Path | None, typer.Option("--out", help="Folder for report.json, report.md and "
                                             "the PNG plots (default: <checkpoint dir>/eval-<manifest>; runs/eval/<name>-<manifest> "
                                             "for a checkpoint shipped inside the package).")] = None,
    label_map: Annotated[str, typer.Option("--label-map", help="auto: score another label set zero-shot "
                                           "through the shared emotions; none: refuse a mismatch.")] = "auto",
    split: Annotated[str, typer.Option("--split", help="Which split's rows to score.")] = "test",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 256,
    device: Annotated[str, typer.Option("--device", help="auto (a CUDA GPU when torch sees one) | cpu | "
                                        "cuda[:N]")] = "auto",
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write the PNG plots.")] = True,
    image_features: Annotated[Path | None, typer.Option("--image-features", help="Feature file for "
                                                        "models that take embeddings.")] = None,
    text_features: Annotated[Path | None, typer.Option("--text-features", help="Caption feature file "
                                                       "for text-fusion models.")] = None,
    html: Annotated[bool, typer.Option("--html", help="Also write report.html: one self-contained page "
                                       "(tables and plots embedded; opens from disk, no network).")] = False,
) -> None:
    """Evaluate a checkpoint: WAR, UAR, macro-F1, per-class scores, AUCs, ECE; honest variants."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from train.checkpoint import CheckpointError
    from train.evaluate import EvalConfig, EvalError, evaluate

    console = Console(stderr=True, soft_wrap=True)
    from features.device import resolve_device
    from features.manifest import check_writable
    from train.evaluate import default_out

    device = resolve_device(device)
    if out is None:
        out = default_out(checkpoint, manifest)
    check_writable(out / "report.json")  # before minutes of scoring, not after
    try:
        cfg = EvalConfig(tta=tta, label_map=label_map, split=split, batch_size=batch_size, device=device,
                         plots=plots, image_features=image_features, text_features=text_features)
        with Progress(TextColumn("eval"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("eval", total=None)
            report = evaluate(checkpoint if len(checkpoint) > 1 else checkpoint[0], manifest, cfg, out, progress=lambda n: bar.advance(task, n))
    except (EvalError, CheckpointError) as e:  # CheckpointError: a sidecar that lacks a field
        console.print(f"train eval: {e}")
        raise typer.Exit(2)
    if report.get("members"):
        for m in report["members"]:
            console.print(f"member {m['checkpoint']}: WAR {100 * m['plain']['war']:.2f} %, "
                          f"UAR {100 * m['plain']['uar']:.2f} % (plain, all rows)")
    table = Table(title=f"{report['model']} on {manifest.name}")
    for col in ("variant", "mode", "n", "WAR", "UAR", "macro-F1", "ECE"):
        table.add_column(col, justify="right" if col not in ("variant", "mode") else "left")
    for vname, modes in report["variants"].items():
        for mode, s in modes.items():
            table.add_row(vname, mode, str(s["n"]), f"{100 * s['war']:.2f}", f"{100 * s['uar']:.2f}",
                          f"{100 * s['macro_f1']:.2f}", f"{s['ece']:.4f}")
    Console().print(table)
    if report["label_mapping"]["zero_shot"]:
        ex = ", ".join(report["label_mapping"]["excluded_manifest_classes"]) or "none"
        console.print(f"zero-shot through the label mapping; excluded manifest classes: {ex}")
    console.print(f"wrote {out / 'report.json'} and {out / 'report.md'} ({report['seconds']} s)")
    if html:
        from features.manifest import OutputError
        from train.report_html import write_html

        try:
            console.print(f"wrote {write_html(report, out, _command_line(ctx))}")
        except OutputError as e:
            console.print(f"train eval: {e}")
            raise typer.Exit(2)


def _command_line(ctx) -> str:
    """This invocation as a shell line (`train eval` + every option given or required), for the
    HTML report; rebuilt from the parsed values so it reads the same however the app was called."""
    import shlex

    words = ["train", "eval"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if value is None or (value == param.default and not param.required) or not param.opts:
            continue
        if isinstance(value, bool):  # --html, --plots/--no-plots
            words += (param.opts if value else param.secondary_opts)[:1]
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            words += [param.opts[0], str(v)]
    return shlex.join(words)
