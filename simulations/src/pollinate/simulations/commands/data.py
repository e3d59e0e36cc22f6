"""``pollinate data ...``: look at datasets."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

data_app = typer.Typer(help="Inspect the datasets Pollinate can load.", no_args_is_help=True)
app.add_typer(data_app, name="data")
console = Console()


@data_app.command("info")
def info(
    name: Annotated[str, typer.Argument(help="Dataset name, e.g. ml-100k or synthetic")],
    data_dir: Annotated[str | None, typer.Option(help="Folder holding the dataset folders")] = None,
) -> None:
    """Print users, items, interactions, density, rating range and time span."""
    from pollinate.shared.data import dataset_info, load_dataset

    try:
        data = load_dataset(name, data_dir=data_dir)
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    table = Table(title=name, show_header=False)
    for key, value in dataset_info(data).items():
        table.add_row(str(key), _show(value))
    console.print(table)


def _show(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.6g}"
    return str(value)
