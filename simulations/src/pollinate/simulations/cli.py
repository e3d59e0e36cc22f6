"""The ``pollinate`` command line: a thin layer over functions that tests call directly.

Each sub-command lives in its own module under ``pollinate.simulations.commands`` and
registers itself on :data:`app`.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="pollinate",
    help="Federated, privacy-preserving recommenders: simulations, references, audits.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(show: bool) -> None:
    if show:
        from pollinate.shared.versions import package_version

        versions = {n: package_version(n) for n in ("flwr", "torch", "opacus", "dp-accounting")}
        libs = ", ".join(f"{n} {v}" for n, v in versions.items() if v)
        typer.echo(f"pollinate {package_version('pollinate') or 'unknown'} ({libs})")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", callback=_version, is_eager=True
    ),
) -> None:
    """Federated, privacy-preserving recommenders: simulations, references, audits."""


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    from pollinate.simulations.commands import (  # noqa: F401
        audit,
        centralized,
        certs,
        data,
        demo,
        device,
        recipes,
        server,
        simulate,
        sweep,
    )


_register()

if __name__ == "__main__":  # pragma: no cover
    # Run as ``python -m pollinate.simulations.cli``: the commands registered themselves
    # on the imported module's ``app``, not on this ``__main__`` copy.
    from pollinate.simulations.cli import app as registered

    registered()
