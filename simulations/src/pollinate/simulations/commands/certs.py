"""``pollinate certs init DIR`` / ``pollinate certs node DIR NAME``: a deployment's CA,
SuperLink certificate and device node keys (logic: :mod:`pollinate.server.deploy.certs`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pollinate.server.deploy.certs import CertPaths, init_certs, make_node_key
from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

certs_app = typer.Typer(help="Certificates and device keys of a deployment.", no_args_is_help=True)
app.add_typer(certs_app, name="certs")


@certs_app.command("init")
def init(
    folder: Annotated[Path, typer.Argument(help="An empty folder for the credentials")],
    host: Annotated[
        list[str] | None,
        typer.Option("--host", help="A name or IP devices dial (repeat); loopback is always in"),
    ] = None,
    nodes: Annotated[int, typer.Option(help="Device key pairs to make (nodes/node-01 ...)")] = 0,
    days: Annotated[int, typer.Option(help="Validity of the certificates in days")] = 365,
) -> None:
    """A CA, the SuperLink's TLS certificate and NODES device key pairs (private keys 0600)."""
    try:
        paths = init_certs(folder, hosts=host or (), nodes=nodes, valid_days=days)
    except PollinateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"CA:         {paths.ca_cert}  (give it to every device; keep ca.key offline)")
    typer.echo(f"SuperLink:  {paths.server_cert}, {paths.server_key}")
    for name in paths.node_names():
        typer.echo(f"device key: {paths.node_key(name)}  (register {paths.node_public_key(name)})")


@certs_app.command("node")
def node(
    folder: Annotated[Path, typer.Argument(help="The folder of `pollinate certs init`")],
    name: Annotated[str, typer.Argument(help="The device's name (a file name)")],
) -> None:
    """One more device key pair: DIR/nodes/NAME (private, 0600) and NAME.pub."""
    try:
        private, public = make_node_key(CertPaths(folder), name)
    except PollinateError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"device key: {private}  (register {public})")
