"""`train run`: train a registered model from manifests (one process, or under torchrun)."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import typing
from pathlib import Path
from typing import Annotated, Optional

import typer

from train.config import TrainConfig


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


CONFIG_OPTION = inspect.Parameter(
    "config", inspect.Parameter.KEYWORD_ONLY, default=None,
    annotation=Annotated[Optional[Path], typer.Option(help="JSON/TOML file of these options; flags override it.")])


def _options() -> list[inspect.Parameter]:
    """`train run`'s options, one per TrainConfig field made with `config.option`, in field
    order; every one defaults to None ("not given": the recipe, --config file or the field's
    default applies), except the --resume switch. --config comes before --recipe."""
    hints = typing.get_type_hints(TrainConfig)
    params = []
    for f in dataclasses.fields(TrainConfig):
        opt = f.metadata.get("option")
        if opt is None:
            continue
        if f.name == "recipe":
            params.append(CONFIG_OPTION)
        kind = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind = next(k for k in kind if k is not type(None))
        if opt["path"]:
            kind = list[Path] if typing.get_origin(hints[f.name]) is tuple else Path
        elif f.name == "model_options":
            kind = list[str]
        # the option itself defaults to None ("not given"); its help shows the field's own default,
        # and says which ones a run cannot go without
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        shown = f.default is not dataclasses.MISSING and f.default not in (None, (), "") \
            and not isinstance(f.default, bool)
        helps = (opt["help"] or "") + (" Required (or from --recipe / --config)." if required else "")
        info = typer.Option(*opt["decls"], help=helps, show_default=str(f.default) if shown else False)
        if f.name == "resume":
            annotation, default = Annotated[bool, info], False
        else:
            annotation, default = Annotated[Optional[kind], info], None
        params.append(inspect.Parameter(opt["name"] or f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=default, annotation=annotation))
    return params


def command(**given) -> None:
    """Train MODEL on a manifest; the best checkpoint is chosen on the validation split."""
    from rich.console import Console

    from train.config import ConfigError, make_config

    err = Console(stderr=True, soft_wrap=True)  # unwrapped: error messages stay greppable
    config, recipe = given.pop("config", None), given.pop("recipe", None)
    model_opt = given.pop("model_opt", None)
    given["resume"] = given.get("resume") or None
    flags = {k: (str(v) if isinstance(v, Path) else tuple(map(str, v)) if isinstance(v, list) else v)
             for k, v in given.items()}
    try:
        opts = _model_options(model_opt or [])
        cfg = make_config(config, recipe=recipe, **flags)
        if opts:
            cfg = dataclasses.replace(cfg, model_options={**cfg.model_options, **opts})
    except (ConfigError, TypeError, typer.BadParameter) as e:
        err.print(f"[red]train run:[/red] {e}")
        raise typer.Exit(2) from None
    summary = _run(cfg, err)
    if int(os.environ.get("RANK", "0")) == 0:
        best = summary["best"]
        stop = "all epochs run" if summary["stop"] == "epochs" else summary["stop"]
        typer.echo(f"best val_{summary['select_metric']} = {best:.4f} at epoch {summary['best_epoch']} "
                   f"({stop}); checkpoint: {summary['run_dir']}/best.safetensors")


# Typer reads a command's options from its signature: this one's comes from TrainConfig
command.__signature__ = inspect.Signature(_options(), return_annotation=None)
command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}


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
    except KeyboardInterrupt:  # Ctrl-C: say what survived and how to go on
        from train.checkpoint import RESUME_FILE

        saved = (Path(cfg.out) / RESUME_FILE).exists()
        typer.echo(f"train run: interrupted; " + (
            f"the last finished epoch is saved in {cfg.out}: run the same command with --resume to go on"
            if saved else "no epoch had finished, so there is nothing to resume"), err=True)
        raise typer.Exit(130) from None


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
                                     console=self.console, transient=True, disable=not self.console.is_terminal)
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
            if not ev.get("transient") or self.console.is_terminal:  # on a pipe, an error stays one line
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
