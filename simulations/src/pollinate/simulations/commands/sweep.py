"""``pollinate sweep``: a privacy-utility curve on the fast engine, in one command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

console = Console(stderr=True)


@app.command("sweep")
def sweep(
    epsilons: Annotated[str, typer.Option(help="Comma-separated ε targets, e.g. 1,2,4,8,16")],
    out: Annotated[Path, typer.Option(help="Folder of the sweep (one run folder per point)")],
    layer: Annotated[str, typer.Option(help="user, local or both (the same ε for each)")] = "user",
    dataset: Annotated[str | None, typer.Option(help="synthetic, ml-100k, ...")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Folder of the datasets")] = None,
    model: Annotated[str | None, typer.Option(help="mf or interest")] = None,
    task: Annotated[str | None, typer.Option(help="rating or ranking")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds of every point")] = None,
    sample_rate: Annotated[float | None, typer.Option(help="Poisson rate q of devices")] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Any simulate option as KEY=VALUE (repeatable)"),
    ] = None,
    non_private: Annotated[
        bool, typer.Option("--non-private/--no-non-private", help="Also run without DP")
    ] = True,
    centralized: Annotated[
        bool, typer.Option("--centralized/--no-centralized", help="Also train centrally")
    ] = True,
    ray_address: Annotated[str | None, typer.Option(help="Join this Ray cluster")] = None,
    workers: Annotated[int | None, typer.Option(help="Shards (default: one per CPU)")] = None,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
) -> None:
    """Run federated simulations at each ε (fast engine) beside the non-private and
    centralized references; write OUT/sweep.csv, OUT/sweep.md and OUT/sweep.png."""
    from pollinate.simulations.fast.engine import parse_config_value
    from pollinate.simulations.fast.sweep import run_sweep

    named = {"dataset": dataset, "data-dir": data_dir, "model": model, "task": task,
             "rounds": rounds, "sample-rate": sample_rate}  # fmt: skip
    base = {k: v for k, v in named.items() if v is not None}
    for item in set_ or []:
        key, sep, value = item.partition("=")
        if not sep:
            console.print(f"[red]error:[/red] --set takes KEY=VALUE, got {item!r}")
            raise typer.Exit(2)
        base[key.strip().lstrip("-")] = parse_config_value(value.strip())
    try:
        values = [float(e) for e in epsilons.split(",") if e.strip()]
    except ValueError:
        console.print(f"[red]error:[/red] --epsilons must be numbers, got {epsilons!r}")
        raise typer.Exit(2) from None
    try:
        rows = run_sweep(base, layer, values, out, non_private=non_private,
                         centralized=centralized, ray_address=ray_address, workers=workers,
                         progress=progress)  # fmt: skip
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    console.print((out / "sweep.md").read_text())
    console.print(f"[green]done[/green]: {len(rows)} points in {out}/sweep.csv, sweep.png")
