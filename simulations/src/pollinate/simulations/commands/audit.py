"""``pollinate audit ...``: audit keys and signed-report verification.

Built so far:

- ``pollinate audit keygen --out DIR``: an Ed25519 key pair, ``DIR/audit.key`` (mode 0600,
  never overwritten) and ``DIR/audit.pub``;
- ``pollinate audit verify DIR --public-key KEY``: checks ``DIR/report.dsse.json`` and every
  file it names; exit 0 when all check out, 1 with the reason on stderr otherwise.

Not built yet: the report builder, ``pollinate audit RUN_DIR [--out DIR] [--sign-key KEY]``
(issue 29), which will read a run directory and write ``report.json``, ``report.html`` and,
with a key, ``report.dsse.json``. The logic lives in :mod:`pollinate.audit`; this module only
parses arguments and prints.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pollinate.simulations.cli import app

audit_app = typer.Typer(
    help="Privacy audits: signing keys and verification of signed audit reports.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")


@audit_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Folder for audit.key and audit.pub")],
) -> None:
    """Make an Ed25519 key pair: OUT/audit.key (private, mode 0600) and OUT/audit.pub."""
    from pollinate.audit.errors import AuditError
    from pollinate.audit.signing import generate_keypair

    try:
        private_path, public_path = generate_keypair(out)
    except (AuditError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"private key: {private_path} (mode 0600; keep it secret)")
    typer.echo(f"public key:  {public_path} (give this to whoever verifies)")


@audit_app.command("verify")
def verify(
    directory: Annotated[
        Path, typer.Argument(help="Folder holding report.dsse.json and the files it names")
    ],
    public_key: Annotated[Path, typer.Option("--public-key", help="The signer's audit.pub (PEM)")],
) -> None:
    """Check the signature of DIR/report.dsse.json and the SHA-256 of every file it covers.

    Exit 0 when everything checks out, 1 (with the reason on stderr) otherwise.
    """
    from pollinate.audit.signing import ENVELOPE_NAME
    from pollinate.audit.signing import verify as verify_envelope

    result = verify_envelope(directory / ENVELOPE_NAME, public_key, directory)
    if not result.ok:
        typer.echo(f"FAILED: {result.reason}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {result.reason}")
