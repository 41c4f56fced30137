"""The error edge of both Typer apps: a user's mistake ends in one line and exit code 2.

`EdgeGroup` is the click group class of `pipeline` and `train`. It turns click's usage errors
(a bad option value, an unknown option, a missing argument) into one line naming the command,
lets `typer.Exit` through, and turns every error class this project defines (any
exception class from the `features`, `pipeline` or `train` packages: ManifestError,
CheckpointError, WeightsError, DeviceError, IngestError, ...) and every OSError (unwritable
output, full disk, a missing file) into one line on stderr, ``<app> <command>: <message>``,
and exit 2. Anything else is a bug and keeps its traceback. Set AFFECTLAB_TRACEBACK=1 to see
the traceback of a translated error too.
"""

from __future__ import annotations

import os

import typer
from typer.core import TyperGroup

EXIT_USER_ERROR = 2
_OURS = ("features", "pipeline", "train")
_FORMAT_ERRORS = ("SafetensorError", "UnpicklingError")


def is_user_error(e: BaseException) -> bool:
    """True for the project's own error classes, OSError, and the two file-format errors of
    weights (SafetensorError, UnpicklingError) that escape a loader."""
    if isinstance(e, OSError):
        return True
    mod = type(e).__module__.split(".")[0]
    if mod in _OURS:
        return True
    # matched by name: importing pickle (or safetensors) here only to name an exception class
    # would pull the modules into the edge of every command
    return type(e).__name__ in _FORMAT_ERRORS


def one_line(e: BaseException) -> str:
    """The message of `e` on one line; an OSError without a message of ours names its file."""
    if isinstance(e, OSError) and type(e).__module__.split(".")[0] not in _OURS and e.filename:
        msg = f"{e.filename}: {e.strerror or e}"
        if e.filename2:
            msg += f" ({e.filename2})"
    else:
        msg = str(e.args[1] if isinstance(e, OSError) and len(e.args) == 2 and isinstance(e.args[1], str)
                  else e) or type(e).__name__
        if isinstance(e, KeyError) and msg.startswith(("'", '"')):
            msg = msg[1:-1]
    if "Weights only load failed" in msg:  # torch's paragraph (it even advises weights_only=False)
        msg = ("a weights file is a pickle holding objects or code, not plain tensors; it was not "
               "unpickled. Use the model's safetensors file (`pipeline weights` lists where each goes)")
    return " ".join(part.strip() for part in msg.splitlines() if part.strip())


class EdgeGroup(TyperGroup):
    """A TyperGroup whose `invoke` translates user errors (see the module docstring), and whose
    help shows no value type beside a flag (typer 0.29 prints `--json <bool>`, which reads as if
    the flag took a value; `--json true` would then be an input named "true")."""

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is not None and ctx is not None:  # help needs a context; a lookup without one does not
            _untyped_flags(cmd.get_params(ctx))
        return cmd

    def get_params(self, ctx):
        return _untyped_flags(super().get_params(ctx))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except Exception as e:  # noqa: BLE001 - filtered by is_user_error; the rest is re-raised
            # click's own exits and usage errors (typer carries its own copy of click) pass through
            if _is_usage_error(e):
                _usage_line(ctx, e)
                raise typer.Exit(EXIT_USER_ERROR) from None
            if type(e).__module__.split(".")[0] in ("click", "typer") or not is_user_error(e) \
                    or os.environ.get("AFFECTLAB_TRACEBACK"):
                raise
            sub = ctx.invoked_subcommand or ""
            typer.echo(f"{_prog(ctx)}{' ' + sub if sub else ''}: {one_line(e)}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None


def _untyped_flags(params: list) -> list:
    """An empty metavar on every flag: typer's help then shows no type beside it."""
    for p in params:
        if getattr(p, "is_flag", False) and p.metavar is None:
            p.metavar = ""
    return params


def _is_usage_error(e: BaseException) -> bool:
    """click's UsageError family (bad value, unknown option, missing argument, no such command),
    matched by class name: typer carries its own copy of click, so there are two such classes.
    A bare command's help (NoArgsIsHelpError) is not an error to shorten."""
    return (type(e).__module__.split(".")[0] in ("click", "typer") and type(e).__name__ != "NoArgsIsHelpError"
            and any(c.__name__ == "UsageError" for c in type(e).__mro__))


def _usage_line(ctx, e) -> None:
    """`<app> <command>: <click's message> (options: <app> <command> --help)` on stderr; click
    would print a usage box of five lines instead."""
    sub = (e.ctx.info_name if getattr(e, "ctx", None) is not None and e.ctx is not ctx
           else ctx.invoked_subcommand or "")
    where = f"{_prog(ctx)}{' ' + sub if sub else ''}"
    msg = " ".join(part.strip() for part in e.format_message().splitlines() if part.strip())
    typer.echo(f"{where}: {msg} (options: {where} --help)", err=True)


def _prog(ctx) -> str:
    """The app's name ('pipeline' / 'train'), also when a test runner or `python -m` names it
    otherwise: taken from the package of its sub-commands."""
    if ctx.info_name in _OURS[1:]:
        return ctx.info_name
    for cmd in (getattr(ctx.command, "commands", None) or {}).values():
        root = getattr(cmd.callback, "__module__", "").split(".")[0]
        if root in _OURS[1:]:
            return root
    return ctx.info_name or "affectlab"
