"""``pollinate demo``: a small synthetic federation, with and without DP, in one table."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app


@app.command("demo")
def demo(
    out: Annotated[Path, typer.Option(help="Demo directory")] = Path("runs/demo"),
    users: Annotated[int, typer.Option(help="Synthetic users (one device each)")] = 1000,
    rounds: Annotated[int, typer.Option(help="Federated rounds")] = 10,
    sample_rate: Annotated[float, typer.Option(help="Share of devices per round")] = 0.2,
    epsilon: Annotated[float, typer.Option(help="User-level ε of the private run")] = 8.0,
    canaries: Annotated[int, typer.Option(help="Canary devices for the audit")] = 200,
    centralized_epochs: Annotated[
        int | None, typer.Option(help="Most epochs of the centralized reference")
    ] = None,
    audit: Annotated[bool, typer.Option("--audit/--no-audit", help="Audit the private run")] = True,
) -> None:
    """Centralized reference, federated without and with user-level DP, and a
    no-federation baseline on synthetic ratings; then pollinate audit on the private run."""
    from pollinate.simulations.demo import DemoSettings, run_demo

    settings = DemoSettings(
        out=out, users=users, rounds=rounds, sample_rate=sample_rate, epsilon=epsilon,
        canaries=canaries, centralized_epochs=centralized_epochs, audit=audit,
    )  # fmt: skip
    try:
        result = run_demo(settings)
    except PollinateError as exc:
        Console(stderr=True).print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    table = Table(title=f"Synthetic ratings, {users:,} devices, {rounds} rounds (test set)")
    for column in ("model", "test RMSE", "privacy"):
        table.add_column(column)
    for row in result["rows"]:
        table.add_row(row["name"], f"{row['rmse']:.4f}", row["privacy"])
    console = Console()
    console.print(table)
    console.print(f"table and commands: {out / 'summary.md'}   plot: {out / 'summary.png'}")
    if result["audit"]["report"]:
        console.print(f"audit report ({result['audit']['verdict']}): {result['audit']['report']}")
    console.print(f"took {result['wall_s']:.0f} s")
