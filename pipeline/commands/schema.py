"""`pipeline schema`: print the manifest contract."""

from __future__ import annotations


def command() -> None:
    """Print every manifest column (core and the groups stages add) as a Markdown table."""
    from features.schema import SCHEMA_VERSION, describe

    print(f"affectlab manifest schema v{SCHEMA_VERSION}\n")
    print(describe())
