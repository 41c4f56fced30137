"""`pipeline synth`: write the embedded synthetic faces as an ImageFolder tree (not a benchmark)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Annotated

import typer

# the sub-folders this command writes, and so the only ones --overwrite may remove
_OWN_PARTS = ("train", "test", "videos")


def command(
    out: Annotated[Path, typer.Option("--out", help="Folder to write train/ test/ (and videos/) into.")],
    per_class: Annotated[int, typer.Option("--per-class", min=1,
                                           help="Images per class; ~20 % of them go to test/.")] = 40,
    seed: Annotated[int, typer.Option("--seed", min=0, help="Same seed, byte-identical files.")] = 0,
    size: Annotated[int, typer.Option("--size", min=16, max=512, help="Image side in pixels (grey).")] = 48,
    videos: Annotated[int, typer.Option("--videos", min=0,
                                        help="Clips per class under videos/ (neutral -> expression).")] = 0,
    frames: Annotated[int, typer.Option("--frames", min=2, help="Frames per clip.")] = 16,
    overwrite: Annotated[bool, typer.Option("--overwrite",
                                            help="Replace train/ test/ videos/ already in --out.")] = False,
) -> None:
    """Generate seeded synthetic faces for the 7 basic classes (for the demo and tests; NOT a benchmark)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.synth import CLASSES, SynthConfig, split_counts, total_files, write_tree

    console = Console(stderr=True, soft_wrap=True)  # whole lines: error messages stay greppable
    present = [p for p in _OWN_PARTS if (out / p).exists()]
    if present and not overwrite:
        typer.echo(f"pipeline synth: {out} already holds {', '.join(p + '/' for p in present)}; "
                   "pass --overwrite to replace them, or choose another --out.", err=True)
        raise typer.Exit(2)
    if out.exists() and not out.is_dir():
        typer.echo(f"pipeline synth: --out {out} is a file; give a folder.", err=True)
        raise typer.Exit(2)
    for p in present:
        shutil.rmtree(out / p)

    cfg = SynthConfig(out=out, per_class=per_class, seed=seed, size=size, videos=videos, frames=frames)
    with Progress(TextColumn("synth"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("synth", total=total_files(cfg))
        counts = write_tree(cfg, progress=lambda n: bar.advance(task, n))
    n_train, n_test = split_counts(per_class)
    console.print(
        f"wrote {counts['train']} train + {counts['test']} test images "
        f"({n_train}+{n_test} per class, {len(CLASSES)} classes, {size}x{size} grey, seed {seed})"
        + (f" and {videos} clips x {frames} frames per class" if videos else "")
        + f" to {out}. Synthetic demo data: not a benchmark.")
