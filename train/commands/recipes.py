"""`train recipes`: the shipped recipes (train/recipes/*.toml), one line each."""

from __future__ import annotations

from typing import Annotated, Optional

import typer


def command(
    name: Annotated[Optional[str], typer.Argument(help="Show this recipe's file: values, sources, deviations.")] = None,
) -> None:
    """List the seeds' recipes (`train run --recipe NAME --manifest ...`), or show one."""
    from importlib import resources

    from train.recipes import RecipeError, list_recipes, load_recipe

    if name is None:
        names = list_recipes()
        width = max(len(n) for n in names)
        for n in names:
            typer.echo(f"{n:<{width}}  {load_recipe(n).summary}")
        return
    try:
        r = load_recipe(name)
    except RecipeError as e:
        typer.echo(f"train recipes: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"# sha256 {r.sha256}")
    typer.echo((resources.files("train.recipes") / f"{name}.toml").read_text(), nl=False)
