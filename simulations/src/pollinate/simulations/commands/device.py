"""``pollinate device join|leave``: a device trains in a deployment on its own store.

Thin over :mod:`pollinate.client.join`, which starts Flower's ``flower-supernode`` as a
child process whose ClientApp opens the store with a key that stays on the device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pollinate.client.join import join as join_superlink
from pollinate.client.join import leave as leave_superlink
from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

device_app = typer.Typer(help="Join a deployment with a device's store.", no_args_is_help=True)
app.add_typer(device_app, name="device")


@device_app.command("join")
def join(
    store: Annotated[Path, typer.Option("--store", help="The device's encrypted store")],
    superlink: Annotated[str, typer.Option(help="The SuperLink's HOST:PORT")],
    ca: Annotated[Path, typer.Option("--ca", help="The deployment's CA certificate (ca.crt)")],
    node_key: Annotated[
        Path, typer.Option("--node-key", help="This device's private node key (registered .pub)")
    ],
    key_file: Annotated[
        Path | None, typer.Option("--key-file", help="The store's key file (0600)")
    ] = None,
    keyring: Annotated[
        str | None, typer.Option(help="SERVICE:USER of the store's key in the keyring")
    ] = None,
) -> None:
    """Start this device's SuperNode in the background; `pollinate device leave` stops it."""
    try:
        record = join_superlink(
            store, superlink=superlink, ca_cert=ca, node_key=node_key, key_file=key_file,
            keyring=keyring,
        )  # fmt: skip
    except PollinateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"SuperNode running: pid {record.pid}, connecting to {superlink} over TLS; log "
        f"{record.info['log']}; stop with `pollinate device leave --store {store}`"
    )


@device_app.command("leave")
def leave(store: Annotated[Path, typer.Option("--store", help="The device's store")]) -> None:
    """Stop this device's SuperNode (its store stays as it is)."""
    try:
        record = leave_superlink(store)
    except PollinateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo("no SuperNode was running" if record is None else f"stopped pid {record.pid}")
