"""Recipes: one TOML file per seed system (and one for the shipped default), read into the same
TrainConfig the CLI fills (`train run --recipe NAME`; flags override).

A recipe file has TrainConfig fields at its top level, a `[model_options]` table, and a `[meta]`
table: `summary` (one line, `train recipes` prints it), `seed` (which system and where its code
is), `sources` (for every value set above, the write-up section or file:line it comes from),
`deviations` (what differs from the seed on purpose, and why) and `not_expressed` (seed settings
this trainer cannot set, and why).
"""

from __future__ import annotations

import hashlib
import tomllib
from dataclasses import dataclass
from importlib import resources
from typing import Any


class RecipeError(ValueError):
    """An unknown recipe name; train.config.make_config turns it into ConfigError."""


@dataclass(frozen=True)
class Recipe:
    name: str
    values: dict[str, Any]  # TrainConfig fields (model_options as a dict)
    meta: dict[str, Any]
    sha256: str  # of the recipe file's bytes, recorded in the run's sidecar

    @property
    def summary(self) -> str:
        return str(self.meta.get("summary", ""))


def _files():
    return resources.files(__name__)


def list_recipes() -> list[str]:
    """Names of the shipped recipes (train/recipes/*.toml), sorted."""
    return sorted(f.name.removesuffix(".toml") for f in _files().iterdir() if f.name.endswith(".toml"))


def load_recipe(name: str) -> Recipe:
    """The recipe `name`, its values as written (train.config.make_config checks them against
    TrainConfig's fields); raises RecipeError naming the known recipes when absent. A `teacher`
    under train/weights/ is resolved against the installed package, so the recipe works from any
    directory."""
    f = _files() / f"{name}.toml"
    if not name or "/" in name or not f.is_file():
        raise RecipeError(f"{name!r} is not a recipe; known: {', '.join(list_recipes())} "
                          "(`train recipes` lists them)")
    raw = f.read_bytes()
    data = tomllib.loads(raw.decode())
    meta = data.pop("meta", {})
    t = data.get("teacher")
    if t and t.startswith("train/weights/"):
        data["teacher"] = str(resources.files("train") / t.removeprefix("train/"))
    return Recipe(name, data, meta, hashlib.sha256(raw).hexdigest())


__all__ = ["Recipe", "RecipeError", "list_recipes", "load_recipe"]
