"""`pipeline`: offline preprocessing into Parquet manifests.

Each sub-command lives in its own module under pipeline/commands/ and imports its heavy
libraries inside the function body, so `pipeline --help` answers at once.
"""

from __future__ import annotations

import typer

from pipeline.commands import ingest, schema, stats, synth

app = typer.Typer(
    help="affectlab offline preprocessing: datasets -> Parquet manifests (queried with DuckDB).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.command("ingest")(ingest.command)
app.command("stats")(stats.command)
app.command("synth")(synth.command)
app.command("schema")(schema.command)


def main(argv: list[str] | None = None) -> None:
    app(args=argv)


if __name__ == "__main__":
    main()
