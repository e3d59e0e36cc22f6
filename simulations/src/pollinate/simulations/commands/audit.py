"""``pollinate audit ...``: audit reports, signing keys, and verification.

- ``pollinate audit RUN_DIR [--out DIR] [--sign-key KEY]``: reads a run directory and writes
  ``DIR/report.json``, ``DIR/report.html`` and, with a key, ``DIR/report.dsse.json``
  (default ``DIR``: ``RUN_DIR/report``; ``RUN_DIR/audit`` holds the audit-only secrets);
  it exits 0 when the report's verdict is ``pass``,
  1 for ``fail`` and 3 for ``not-private``, so that a pipeline can gate on it;
- ``pollinate audit keygen --out DIR``: an Ed25519 key pair, ``DIR/audit.key`` (mode 0600,
  never overwritten) and ``DIR/audit.pub``;
- ``pollinate audit verify DIR --public-key KEY``: checks ``DIR/report.dsse.json`` and every
  file it names; exit 0 when all check out, 1 with the reason on stderr otherwise.

The logic lives in :mod:`pollinate.audit`; this module only parses arguments and prints.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from pollinate.simulations.cli import app


class _RunDirFirst(TyperGroup):
    """``pollinate audit RUN_DIR`` runs the ``report`` command; ``keygen`` and ``verify``
    keep their names (a run directory named like them needs ``audit report NAME``)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["report", *args]
        return super().parse_args(ctx, args)


audit_app = typer.Typer(
    cls=_RunDirFirst,
    help="Privacy audits: pollinate audit RUN_DIR writes the report; keygen and verify sign "
    "and check it.",
    no_args_is_help=True,
)
app.add_typer(audit_app, name="audit")

#: Exit codes of ``pollinate audit RUN_DIR`` by verdict.
VERDICT_EXIT = {"pass": 0, "fail": 1, "not-private": 3}


@audit_app.command("report")
def report(
    run_dir: Annotated[Path, typer.Argument(help="The run directory of pollinate simulate")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Folder for the report (default RUN_DIR/report)")
    ] = None,
    sign_key: Annotated[
        Path | None,
        typer.Option("--sign-key", help="audit.key: also sign the report (report.dsse.json)"),
    ] = None,
    baseline: Annotated[
        Path | None,
        typer.Option(
            "--baseline",
            help="A run without DP made with the same canaries: its attack and canary "
            "figures go beside this run's",
        ),
    ] = None,
    centralized: Annotated[
        Path | None,
        typer.Option("--centralized", help="A pollinate centralized output folder (reference)"),
    ] = None,
    without_canaries: Annotated[
        Path | None,
        typer.Option(
            "--without-canaries",
            help="The same run made without canaries: the canaries' cost to utility",
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset",
            help="Where the run's data is now, if not where config.json says (a registry "
            "name or your own .csv/.tsv/.parquet file); the attacks and the utility use it",
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option("--columns", help="Your file's columns: user=COL,item=COL,rating=COL,..."),
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option("--data-dir", help="Folder of the registry datasets")
    ] = None,
) -> None:
    """Audit RUN_DIR: recompute every guarantee, run the empirical audit when the run has
    canaries, and write report.json, report.html (and report.dsse.json with a key)."""
    from pollinate.audit.errors import AuditError
    from pollinate.audit.report import write_report
    from pollinate.audit.signing import ENVELOPE_NAME, sign, write_envelope
    from pollinate.shared.errors import PollinateError

    out_dir = out if out is not None else run_dir / "report"
    try:
        json_path, html_path = write_report(
            run_dir,
            out_dir,
            baseline=baseline,
            centralized=centralized,
            without_canaries=without_canaries,
            data={"dataset": dataset, "columns": columns, "data-dir": data_dir},
        )
        data = json.loads(json_path.read_text())
        if sign_key is not None:
            # The signed files are copied beside the report, so that verify finds each by
            # its name in one folder.
            subjects = [("report.json", json_path), ("report.html", html_path)]
            for name, source in (("model.npz", run_dir / "release" / "model.npz"),
                                 ("ledger.jsonl", run_dir / "ledger.jsonl")):  # fmt: skip
                if source.exists():
                    shutil.copyfile(source, out_dir / name)
                    subjects.append((name, out_dir / name))
            predicate = {
                "verdict": data["verdict"],
                "run": data["run"],
                "epsilon": {k: v.get("epsilon") for k, v in data["layers"].items()},
            }
            write_envelope(sign(subjects, predicate, sign_key), out_dir / ENVELOPE_NAME)
    except (AuditError, PollinateError, OSError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"verdict: {data['verdict']} ({data['verdict_reason']})")
    typer.echo(f"report: {html_path}")
    raise typer.Exit(VERDICT_EXIT.get(data["verdict"], 1))


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
