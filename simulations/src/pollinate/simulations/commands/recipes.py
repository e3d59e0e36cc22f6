"""``pollinate recipes [NAME]``: the shipped run files of the measured settings."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app


@app.command("recipes")
def recipes(
    name: Annotated[
        str | None,
        typer.Argument(help="Show this recipe's run file (e.g. ml-100k/rating/user-dp)"),
    ] = None,
) -> None:
    """List the recipes (run files of measured settings), or print one of them.

    Run one with ``pollinate simulate --recipe NAME [--data-dir DIR]``; any flag overrides
    the recipe's value, and ``--config FILE`` starts from your own copy.
    """
    from pollinate.simulations.recipes import all_recipes, load_recipe

    out = Console(soft_wrap=True)
    if name is not None:
        try:
            recipe = load_recipe(name)
        except PollinateError as exc:
            Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(2) from None
        out.print(f"# {recipe.name}: pollinate simulate --recipe {recipe.name}", highlight=False)
        out.print(recipe.path.read_text(encoding="utf-8"), highlight=False, markup=False)
        return
    table = Table(title="pollinate simulate --recipe NAME", show_lines=False)
    table.add_column("recipe", no_wrap=True)
    table.add_column("what it runs")
    table.add_column("what it measured")
    for recipe in all_recipes():
        table.add_row(recipe.name, recipe.title, recipe.result)
    out.print(table)
