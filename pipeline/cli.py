"""`pipeline`: offline preprocessing into Parquet manifests.

Each sub-command lives in its own module under pipeline/commands/ and imports its heavy
libraries inside the function body, so `pipeline --help` answers at once.
"""

from __future__ import annotations

import typer

from features.cli_edge import EdgeGroup

from pipeline.commands import ingest, schema, stats, synth

app = typer.Typer(
    cls=EdgeGroup,  # one line + exit 2 for every user error (features/cli_edge.py)
    help="affectlab offline preprocessing: datasets -> Parquet manifests (queried with DuckDB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("ingest")(ingest.command)
app.command("stats")(stats.command)
app.command("synth")(synth.command)
app.command("schema")(schema.command)
from pipeline.commands import balance  # noqa: E402
app.command("balance")(balance.command)
from pipeline.commands import merge  # noqa: E402
app.command("merge")(merge.command)
from pipeline.commands import faces  # noqa: E402
app.command("faces")(faces.command)
from pipeline.commands import enhance  # noqa: E402
app.command("enhance")(enhance.command)
from pipeline.commands import caption, embed  # noqa: E402
app.command("caption")(caption.command)
app.command("embed")(embed.command)
from pipeline.commands import weights  # noqa: E402
app.command("weights")(weights.command)


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
