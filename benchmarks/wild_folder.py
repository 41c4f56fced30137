"""Write wild_dev's photos as a labelled folder, `OUT/<label>/<sha1>.jpg`, for `train predict`.

wild_dev (`../shared/data/wild_dev/wild_dev.parquet`) holds its photos as JPEG bytes in a Parquet
table; `train predict` scores a folder whose subfolders are class names (docs/predict.md). Its
PROVENANCE.md allows development and reporting only: predict on the folder, never train on it.

    make wild-folder                      # -> runs/wild_dev
    train predict runs/wild_dev --json > wild.json     # the summary line gives accuracy and UAR

The bytes are written as they are (no re-encoding), so `train predict` decodes exactly what the
table holds. Exits 2 with one line when the table is missing or OUT already holds photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False)


def write_folder(wild: Path, out: Path, limit: int = 0) -> int:
    """Write the first `limit` photos of `wild` (0: all) under `out/<label>/<sha1>.jpg`; returns
    how many. Raises FileNotFoundError (no table) and FileExistsError (out holds .jpg files)."""
    import pyarrow.parquet as pq

    if not wild.is_file():
        raise FileNotFoundError(f"{wild} not found: wild_dev.parquet is in ../shared/data/wild_dev")
    if out.is_dir() and any(out.rglob("*.jpg")):
        raise FileExistsError(f"{out} already holds photos: remove it or choose another --out")
    t = pq.read_table(wild, columns=["image", "label", "sha1"])
    t = t.slice(0, limit) if limit else t
    for blob, label, sha in zip(*(t.column(c).to_pylist() for c in ("image", "label", "sha1"))):
        (out / label).mkdir(parents=True, exist_ok=True)
        (out / label / f"{sha}.jpg").write_bytes(blob)
    return t.num_rows


@app.command()
def main(
    wild: Annotated[Path, typer.Option(help="wild_dev.parquet")] = Path("../shared/data/wild_dev/wild_dev.parquet"),
    out: Annotated[Path, typer.Option(help="folder to write <label>/<sha1>.jpg into")] = Path("runs/wild_dev"),
) -> None:
    try:
        n = write_folder(wild, out)
    except (FileNotFoundError, FileExistsError) as e:
        typer.echo(f"wild_folder: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"wrote {n} photos under {out}/<label>/; score them with `train predict {out} --json > wild.json`")


if __name__ == "__main__":
    app()
