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


def _register() -> None:
    # Imported for their side effect: each module adds its commands to ``app``.
    from pollinate.simulations.commands import audit, centralized, data, simulate  # noqa: F401


_register()

if __name__ == "__main__":  # pragma: no cover
    app()
