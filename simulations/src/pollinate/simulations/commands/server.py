"""``pollinate server start|stop|register|nodes|run``: the operator's side of a deployment.

Thin over :mod:`pollinate.server.deploy` (which is thin over Flower 1.41's own
``flower-superlink`` and ``flwr``). Every key of a run (``docs/configuration.md``) is a
run-config key: give them in a run file (``--config run.toml``), a recipe, or
``--set key=value``; they are validated here before anything is submitted.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer

from pollinate.server.deploy.run import describe_round, round_trouble, run_and_wait
from pollinate.server.deploy.superlink import (
    DEFAULT_PORT,
    list_nodes,
    register_node,
    start_superlink,
    stop_superlink,
)
from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

server_app = typer.Typer(
    help="Run the center of a deployment: a SuperLink with TLS and device authentication.",
    no_args_is_help=True,
)
app.add_typer(server_app, name="server")

StateOption = Annotated[
    Path, typer.Option("--state", help="The SuperLink's folder (pid file, log, link state)")
]
DEFAULT_STATE = Path("pollinate-server")


def _fail(exc: Exception, code: int = 2) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(code)


@server_app.command("start")
def start(
    certs: Annotated[Path, typer.Option("--certs", help="The folder of `pollinate certs init`")],
    state: StateOption = DEFAULT_STATE,
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: all)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="The one HTTPS port of Fleet/Control/Runtime")] = (
        DEFAULT_PORT
    ),
) -> None:
    """Start a SuperLink with TLS and device (SuperNode) authentication in the background."""
    try:
        record = start_superlink(certs, state, host=host, port=port)
    except PollinateError as exc:
        raise _fail(exc) from None
    typer.echo(
        f"SuperLink running: pid {record.pid}, {record.info['address']} (TLS, devices must be "
        f"registered); log {record.info['log']}; stop with `pollinate server stop --state {state}`"
    )


@server_app.command("stop")
def stop(state: StateOption = DEFAULT_STATE) -> None:
    """Stop exactly the SuperLink of --state (no other SuperLink on the machine)."""
    try:
        record = stop_superlink(state)
    except PollinateError as exc:
        raise _fail(exc) from None
    if record is None:
        typer.echo(f"no SuperLink of {state} was running")
    else:
        typer.echo(f"stopped the SuperLink (pid {record.pid})")


@server_app.command("register")
def register(
    public_key: Annotated[list[Path], typer.Argument(help="Device public keys (.pub)")],
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Admit devices: register their public keys with the running SuperLink."""
    for key in public_key:
        try:
            node_id = register_node(state, key)
        except PollinateError as exc:
            raise _fail(exc) from None
        typer.echo(f"registered {key} as node {node_id}")


@server_app.command("nodes")
def nodes(state: StateOption = DEFAULT_STATE) -> None:
    """The registered devices and whether they are online."""
    try:
        rows = list_nodes(state)
    except PollinateError as exc:
        raise _fail(exc) from None
    for row in rows:
        typer.echo(
            f"{row.get('node-id')}  {row.get('status')}  online since {row.get('online-at')}"
        )


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise PollinateError(f"--set takes KEY=VALUE, got {item!r}")
        try:
            value = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            value = raw  # a bare word: a string
        out[key.strip()] = value
    return out


@server_app.command("run")
def run(
    config: Annotated[
        Path | None, typer.Option("--config", help="A run file (TOML) of run-config keys")
    ] = None,
    recipe: Annotated[str | None, typer.Option(help="A recipe (pollinate recipes)")] = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="KEY=VALUE of any run-config key (repeat); wins over files"),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(help="Continue the run directory of an interrupted run from its checkpoint"),
    ] = None,
    state: StateOption = DEFAULT_STATE,
) -> None:
    """Submit the ServerApp, stream its log, and exit non-zero unless it completed."""
    from pollinate.simulations.commands.simulate import build_config, file_options

    try:
        options = _parse_sets(sets or [])
        base = file_options(config, recipe) if resume is None else None
        cfg = build_config(options, resume, base)
        # Real devices know items by the app's ids and keep no dataset: send the catalogue.
        cfg = cfg.model_copy(update={"send_catalogue": True, "device_state_dir": None})
        report = run_and_wait(state, cfg, resume=resume is not None)
    except PollinateError as exc:
        raise _fail(exc) from None
    typer.echo(f"run {report.run_id}: {report.status} {report.details or ''}".rstrip())
    for entry in report.rounds:
        if int(entry.get("round", 0)) >= 1:
            typer.echo(describe_round(entry))
    troubled = [e for e in report.rounds if round_trouble(e)]
    if troubled:
        typer.echo(
            f"WARNING: devices failed or refused in rounds {[e['round'] for e in troubled]} "
            f"(see {cfg.out}/messages.jsonl and the devices' logs)",
            err=True,
        )
    if not report.ok:
        typer.echo(
            f"error: the ServerApp did not complete ({report.status}); its log is above and "
            f"in {state}/runs/{report.run_id}.log",
            err=True,
        )
        raise typer.Exit(1)
    sys.stdout.flush()
