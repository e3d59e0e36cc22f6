"""``pollinate audit keygen`` and ``pollinate audit verify``: exit codes and messages."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from pollinate.audit.signing import ENVELOPE_NAME, sign, write_envelope
from pollinate.simulations.cli import app


def _signed_folder(tmp_path: Path, private: Path) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"verdict": "pass"}))
    (run / "model.npz").write_bytes(b"\x00model")
    (run / "ledger.jsonl").write_text('{"z": 0.5}\n')
    subjects = [(name, run / name) for name in ("report.json", "model.npz", "ledger.jsonl")]
    write_envelope(sign(subjects, {"verdict": "pass"}, private), run / ENVELOPE_NAME)
    return run


def test_keygen_then_verify_then_tamper(tmp_path: Path) -> None:
    runner = CliRunner()
    keys = tmp_path / "keys"
    result = runner.invoke(app, ["audit", "keygen", "--out", str(keys)])
    assert result.exit_code == 0, result.output
    assert (keys / "audit.key").is_file() and (keys / "audit.pub").is_file()

    again = runner.invoke(app, ["audit", "keygen", "--out", str(keys)])
    assert again.exit_code == 1
    assert "already exists" in again.stderr

    run = _signed_folder(tmp_path, keys / "audit.key")
    ok = runner.invoke(app, ["audit", "verify", str(run), "--public-key", str(keys / "audit.pub")])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout.startswith("OK")

    (run / "ledger.jsonl").write_text('{"z": 10}\n')
    bad = runner.invoke(app, ["audit", "verify", str(run), "--public-key", str(keys / "audit.pub")])
    assert bad.exit_code == 1
    assert "digest mismatch for ledger.jsonl" in bad.stderr


def test_verify_with_the_wrong_key_or_no_envelope_exits_1(tmp_path: Path) -> None:
    runner = CliRunner()
    assert runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "a")]).exit_code == 0
    assert runner.invoke(app, ["audit", "keygen", "--out", str(tmp_path / "b")]).exit_code == 0
    run = _signed_folder(tmp_path, tmp_path / "a" / "audit.key")
    wrong = runner.invoke(
        app, ["audit", "verify", str(run), "--public-key", str(tmp_path / "b" / "audit.pub")]
    )
    assert wrong.exit_code == 1 and "wrong public key" in wrong.stderr

    empty = tmp_path / "empty"
    empty.mkdir()
    none = runner.invoke(
        app, ["audit", "verify", str(empty), "--public-key", str(tmp_path / "a" / "audit.pub")]
    )
    assert none.exit_code == 1 and "missing envelope" in none.stderr
