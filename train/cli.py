"""`train`: the lean trainer. Reads manifests only; never imports `pipeline`.

Each sub-command lives in its own module under train/commands/ and imports torch inside the
function body, so `train --help` answers at once.
"""

from __future__ import annotations

import typer

from features.cli_edge import EdgeGroup

app = typer.Typer(
    cls=EdgeGroup,  # one line + exit 2 for every user error (features/cli_edge.py)
    help="affectlab trainer: train FER models from manifests, evaluate, calibrate and export them, "
         "predict on photos, videos and cameras, and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from train.commands import eval as _eval, export as _export, predict as _predict  # noqa: E402
app.command("eval")(_eval.command)
app.command("predict")(_predict.command)
app.command("export")(_export.command)
from train.commands import calibrate as _calibrate, models as _models, run as _run  # noqa: E402
app.command("run")(_run.command)
app.command("models")(_models.command)
app.command("calibrate")(_calibrate.command)
from train.commands import recipes as _recipes  # noqa: E402
app.command("recipes")(_recipes.command)
from train.commands import serve as _serve  # noqa: E402
app.command("serve")(_serve.command)


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
