"""`train run`: train a registered model from manifests (one process, or under torchrun)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

_O = typer.Option


def _model_options(pairs: list[str]) -> dict:
    """--model-opt key=value; values are JSON when they parse (numbers, true, [1,2]), else text."""
    out = {}
    for p in pairs:
        if "=" not in p:
            raise typer.BadParameter(f"--model-opt {p!r}: write it as key=value")
        k, v = p.split("=", 1)
        try:
            out[k.strip().replace("-", "_")] = json.loads(v)
        except json.JSONDecodeError:
            out[k.strip().replace("-", "_")] = v
    return out


def command(
    manifest: Annotated[Optional[Path], _O(help="Training manifest (split=train rows).")] = None,
    model: Annotated[Optional[str], _O(help="Registered model name (`train models` lists them).")] = None,
    val: Annotated[Optional[Path], _O(help="Validation manifest; default: *_val beside *_train.")] = None,
    config: Annotated[Optional[Path], _O(help="JSON/TOML file of these options; flags override it.")] = None,
    recipe: Annotated[Optional[str], _O(help="A seed's recipe (`train recipes` lists them); --config and flags override it.")] = None,
    preset: Annotated[Optional[str], _O(help="Label preset 7|5|4|2.")] = None,
    classes: Annotated[Optional[str], _O(help="Train on this label set's classes (e.g. fer2013 on a FER+ manifest: contempt rows dropped).")] = None,
    targets: Annotated[Optional[str], _O(help="labels | votes (FER+ vote distributions as probability targets).")] = None,
    vote_weight: Annotated[Optional[float], _O(help="With --targets votes: w*votes + (1-w)*one-hot label.")] = None,
    text_features: Annotated[Optional[Path], _O(help="Caption feature file (sample_id, vector[, tokens]).")] = None,
    image_features: Annotated[Optional[Path], _O(help="Image feature file, for feature-input models.")] = None,
    model_opt: Annotated[Optional[list[str]], _O(help="Model config override key=value (repeat).")] = None,
    epochs: Annotated[Optional[int], _O()] = None,
    batch_size: Annotated[Optional[int], _O()] = None,
    lr: Annotated[Optional[float], _O()] = None,
    optimizer: Annotated[Optional[str], _O(help="adam | adamw | sgd")] = None,
    scheduler: Annotated[Optional[str], _O(help="none | cosine | cosine-restarts | plateau | onecycle")] = None,
    warmup: Annotated[Optional[int], _O(help="Epochs of linear warm-up.")] = None,
    weight_decay: Annotated[Optional[float], _O()] = None,
    label_smoothing: Annotated[Optional[float], _O()] = None,
    loss: Annotated[Optional[str], _O(help="ce | focal | cmaen (the model's own loss)")] = None,
    class_weights: Annotated[Optional[str], _O(help="none | balanced")] = None,
    clip_grad: Annotated[Optional[float], _O(help="Max gradient norm.")] = None,
    amp: Annotated[Optional[bool], _O("--amp/--no-amp", help="bf16 autocast (fp16 on CUDA with --amp-dtype fp16).")] = None,
    amp_dtype: Annotated[Optional[str], _O(help="bf16 | fp16")] = None,
    channels_last: Annotated[Optional[str], _O(help="auto | on | off")] = None,
    augment: Annotated[Optional[str], _O(help="none | light | strong | cmaen | miniaffectgpt | affectfusion")] = None,
    early_stop: Annotated[Optional[int], _O(help="Stop after N epochs without a better val metric.")] = None,
    select_metric: Annotated[Optional[str], _O(help="uar | acc | f1: picks the best checkpoint on val.")] = None,
    seed: Annotated[Optional[int], _O()] = None,
    out: Annotated[Optional[Path], _O(help="Run directory (checkpoints, log.jsonl, log.csv).")] = None,
    resume: Annotated[bool, _O("--resume", help="Continue the run in --out exactly where it stopped.")] = False,
    device: Annotated[Optional[str], _O(help="auto | cpu | cuda")] = None,
    workers: Annotated[Optional[int], _O(help="Threads that decode the manifest images.")] = None,
    threads: Annotated[Optional[int], _O(help="Torch CPU threads (1 is faster on a busy, shared CPU).")] = None,
    max_steps: Annotated[Optional[int], _O(help="At most this many steps per epoch (smoke tests).")] = None,
    frames: Annotated[Optional[int], _O(help="Frames per clip for video models.")] = None,
    tensorboard: Annotated[Optional[bool], _O("--tensorboard/--no-tensorboard")] = None,
    teacher: Annotated[Optional[Path], _O(help="Distil from this trained checkpoint (run dir or .safetensors).")] = None,
    init: Annotated[Optional[Path], _O(help="Start from this trained checkpoint's weights (fine-tuning; same model and options).")] = None,
    distill_alpha: Annotated[Optional[float], _O(help="Weight of the teacher's soft targets (0..1).")] = None,
    distill_temperature: Annotated[Optional[float], _O(help="Softmax temperature of the soft targets.")] = None,
    min_lr: Annotated[Optional[float], _O(help="LR floor of cosine / cosine-restarts.")] = None,
    restart_period: Annotated[Optional[int], _O(help="cosine-restarts: first cycle, epochs.")] = None,
    restart_mult: Annotated[Optional[float], _O(help="cosine-restarts: cycle length multiplier.")] = None,
    restart_decay: Annotated[Optional[float], _O(help="cosine-restarts: peak LR factor per cycle.")] = None,
    restart_warmup: Annotated[Optional[int], _O(help="cosine-restarts: warm-up epochs per cycle.")] = None,
    plateau_patience: Annotated[Optional[int], _O(help="plateau: epochs without gain before a cut.")] = None,
    plateau_factor: Annotated[Optional[float], _O(help="plateau: LR factor of a cut.")] = None,
    eval_resize: Annotated[Optional[int], _O(help="Resize the shorter side to N, then centre-crop (kept in the checkpoint).")] = None,
) -> None:
    """Train MODEL on a manifest; the best checkpoint is chosen on the validation split."""
    from rich.console import Console

    from train.config import ConfigError, make_config

    err = Console(stderr=True, soft_wrap=True)  # unwrapped: error messages stay greppable
    flags = dict(manifest=manifest, model=model, val=val, preset=preset, classes=classes,
                 targets=targets, vote_weight=vote_weight, text_features=text_features,
                 image_features=image_features, epochs=epochs, batch_size=batch_size, lr=lr,
                 optimizer=optimizer, scheduler=scheduler, warmup=warmup, weight_decay=weight_decay,
                 label_smoothing=label_smoothing, loss=loss, class_weights=class_weights,
                 clip_grad=clip_grad, amp=amp, amp_dtype=amp_dtype, channels_last=channels_last,
                 augment=augment, early_stop=early_stop, select_metric=select_metric, seed=seed,
                 out=out, resume=resume or None, device=device, workers=workers, threads=threads,
                 max_steps=max_steps, frames=frames, tensorboard=tensorboard, teacher=teacher, init=init,
                 distill_alpha=distill_alpha, distill_temperature=distill_temperature,
                 min_lr=min_lr, restart_period=restart_period, restart_mult=restart_mult,
                 restart_decay=restart_decay, restart_warmup=restart_warmup,
                 plateau_patience=plateau_patience, plateau_factor=plateau_factor,
                 eval_resize=eval_resize)
    flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items()}
    try:
        opts = _model_options(model_opt or [])
        cfg = make_config(config, recipe=recipe, **flags)
        if opts:
            from dataclasses import replace

            cfg = replace(cfg, model_options={**cfg.model_options, **opts})
    except (ConfigError, TypeError, typer.BadParameter) as e:
        err.print(f"[red]train run:[/red] {e}")
        raise typer.Exit(2) from None
    summary = _run(cfg, err)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        typer.echo(f"best val_{summary['select_metric']} = {best:.4f} at epoch {summary['best_epoch']} "
                   f"({summary['stop']}); checkpoint: {summary['run_dir']}/best.safetensors")


def _run(cfg, err):
    from features.hub import WeightsNotFound
    from features.manifest import ManifestError
    from train.checkpoint import CheckpointError
    from train.config import ConfigError
    from train.data import DataError
    from train.loop import TrainError, fit
    from train.models.registry import UnknownModel

    from features.device import resolve_device
    from features.manifest import check_same_set, sweep_stale_tmp
    from train.data import sibling_val

    resolve_device(cfg.device)  # `--device cuda` on a CPU machine: one line here, not a traceback later
    if cfg.manifest:
        check_same_set([cfg.manifest, cfg.val or sibling_val(cfg.manifest)])
    display = _Display(err, enabled=int(os.environ.get("RANK", "0")) == 0)
    try:
        with display, _run_lock(Path(cfg.out)):
            sweep_stale_tmp(cfg.out)
            return fit(cfg, progress=display.on_event)
    except (ManifestError, DataError, TrainError, CheckpointError, ConfigError, UnknownModel,
            WeightsNotFound) as e:
        err.print(f"[red]train run:[/red] {e}")
        raise typer.Exit(2) from None
    except TypeError as e:  # the registry's "model X has no option(s) ..." message
        if "has no option" not in str(e):
            raise
        err.print(f"[red]train run:[/red] {e}")
        raise typer.Exit(2) from None


class _run_lock:
    """An exclusive fcntl.flock on RUN_DIR/.lock for the whole run: a second `train run` into the
    same --out stops at once (exit 2) instead of silently replacing the first one's files. The
    kernel drops the lock when the process dies, so a killed run never leaves it held. Only rank
    0 takes it under torchrun (the ranks of one run share the folder)."""

    def __init__(self, run_dir: Path):
        self.run_dir, self.f, self.created = run_dir, None, False

    def __enter__(self):
        import fcntl

        if int(os.environ.get("RANK", "0")) != 0:
            return self
        from features.manifest import check_writable

        check_writable(self.run_dir / ".lock", "--out")
        self.created = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.f = open(self.run_dir / ".lock", "a+")
        try:
            fcntl.flock(self.f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self.f.seek(0)
            holder = self.f.read().strip() or "another process"
            self.f.close()
            self.f = None
            raise RunLocked(f"{self.run_dir} is in use by another `train run` ({holder}); wait for it "
                            "or choose another --out") from None
        self.f.seek(0)
        self.f.truncate()
        self.f.write(f"pid {os.getpid()}\n")
        self.f.flush()
        return self

    def __exit__(self, *exc):
        if self.f is not None:
            self.f.close()  # closing releases the flock
            if self.created and [p.name for p in self.run_dir.iterdir()] == [".lock"]:
                # a run that failed before writing anything leaves no folder behind
                (self.run_dir / ".lock").unlink()
                self.run_dir.rmdir()


class RunLocked(RuntimeError):
    """Another `train run` holds the run folder's lock."""


class _Display:
    """rich progress for steps, one table row per epoch; only here, at the CLI edge."""

    def __init__(self, console, enabled: bool):
        self.console, self.enabled, self.task = console, enabled, None
        self.progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeElapsedColumn(), TextColumn("{task.fields[loss]}"),
                                     console=self.console, transient=True)
            self.progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def on_event(self, ev: dict) -> None:
        if self.progress is None:
            return
        kind = ev["kind"]
        if kind == "status":
            self.console.print(ev["text"])
        elif kind == "epoch_start":
            if self.task is not None:
                self.progress.remove_task(self.task)
            self.task = self.progress.add_task(f"epoch {ev['epoch'] + 1}/{ev['epochs']}",
                                               total=ev["steps"], loss="")
        elif kind == "step" and self.task is not None:
            self.progress.update(self.task, completed=ev["step"], loss=f"loss {ev['loss']:.4f}")
        elif kind == "epoch_end":
            star = " *" if ev["best"] else ""
            self.console.print(
                f"epoch {ev['epoch']:>3}  loss {ev['train_loss']:.4f}  val acc {ev['val_acc']:.4f}  "
                f"uar {ev['val_uar']:.4f}  f1 {ev['val_f1']:.4f}  lr {ev['lr']:.2e}  "
                f"{ev['train_img_s']:.0f} img/s{star}")
