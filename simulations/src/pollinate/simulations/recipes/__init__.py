"""Named run files for the measured settings: ``DATASET/TASK/VARIANT``.

Each recipe is a TOML run file shipped in this package (``ml-100k/rating/user-dp.toml``)
with the keys of :class:`~pollinate.shared.config.FederationConfig` and an ``[about]``
table: a title, the figure it measured and where that figure is recorded. ``pollinate
simulate --recipe ml-100k/rating/user-dp`` runs it; ``pollinate recipes`` lists them.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from pollinate.shared.config import read_run_file
from pollinate.shared.errors import ConfigError

SUFFIX = ".toml"


@dataclass(frozen=True)
class Recipe:
    """A shipped run file: its name, keys and ``[about]`` text."""

    name: str
    path: Path
    values: dict[str, Any]
    about: dict[str, Any]

    @property
    def title(self) -> str:
        return str(self.about.get("title", ""))

    @property
    def result(self) -> str:
        return str(self.about.get("result", ""))


def _root() -> Traversable:
    return resources.files(__name__)


def _walk(folder: Traversable, prefix: str) -> list[str]:
    names: list[str] = []
    for entry in folder.iterdir():
        if entry.is_dir() and not entry.name.startswith(("_", ".")):
            names += _walk(entry, f"{prefix}{entry.name}/")
        elif entry.name.endswith(SUFFIX):
            names.append(prefix + entry.name[: -len(SUFFIX)])
    return names


def recipe_names() -> list[str]:
    """Every shipped recipe's name, sorted."""
    return sorted(_walk(_root(), ""))


def load_recipe(name: str) -> Recipe:
    """The recipe ``name`` (``DATASET/TASK/VARIANT``); :class:`ConfigError` listing the
    known names when there is none."""
    names = recipe_names()
    if name not in names:
        raise ConfigError(
            f"unknown recipe {name!r}; the recipes are {', '.join(names)} "
            "(pollinate recipes lists them with what each measured)"
        )
    with resources.as_file(_root().joinpath(*f"{name}{SUFFIX}".split("/"))) as path:
        values, about = read_run_file(path)
        return Recipe(name=name, path=Path(path), values=values, about=about)


def all_recipes() -> list[Recipe]:
    return [load_recipe(n) for n in recipe_names()]
