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
    name: Annotated[
        str | None,
        typer.Argument(
            help="Dataset name (synthetic, ml-100k, ...) or the path of your own "
            ".csv, .tsv or .parquet file",
            show_default=False,
        ),
    ] = None,
    dataset: Annotated[
        str | None, typer.Option(help="The same as the argument (as in simulate)")
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Your file's columns, user=COL,item=COL,rating=COL,timestamp=COL "
            "(left out: detected from the header)"
        ),
    ] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder holding the dataset folders")] = None,
) -> None:
    """Print users, items, interactions, density, rating range and time span."""
    from pollinate.shared.data import dataset_info, is_file_dataset, load_dataset, resolve_columns

    target = dataset or name
    if target is None or (dataset is not None and name is not None and dataset != name):
        console.print("[red]error:[/red] give one dataset: a name or a file path")
        raise typer.Exit(2)
    try:
        mapping = resolve_columns(target, columns) if is_file_dataset(target) else None
        data = load_dataset(target, data_dir=data_dir, columns=columns)
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=target, show_header=False)
    if mapping is not None:
        table.add_row("columns", mapping.to_text())
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
