"""`train`: the lean trainer. Reads manifests only; never imports `pipeline`.

Each sub-command lives in its own module under train/commands/ and imports torch inside the
function body, so `train --help` answers at once.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    help="affectlab trainer: train, evaluate, export and serve FER models from manifests.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
