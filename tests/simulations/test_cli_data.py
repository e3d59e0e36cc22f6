from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from pollinate.simulations.cli import app


def test_data_info_on_the_synthetic_default() -> None:
    result = CliRunner().invoke(app, ["data", "info", "synthetic"])
    assert result.exit_code == 0, result.output
    assert "users" in result.output and "1,000" in result.output


def test_data_info_on_ml100k(shared_data: Path) -> None:
    result = CliRunner().invoke(app, ["data", "info", "ml-100k", "--data-dir", str(shared_data)])
    assert result.exit_code == 0, result.output
    for text in ("943", "1,682", "100,000", "1997-09-20"):
        assert text in result.output


def test_a_missing_dataset_says_where_to_put_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["data", "info", "amazon-beauty", "--data-dir", str(tmp_path)], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 2
    assert "Beauty.s3rec.txt" in result.output and "--data-dir" in result.output
