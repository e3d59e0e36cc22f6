"""Your own data from the command line: a CSV/TSV/Parquet file and its column mapping, in
``data info``, ``centralized`` and ``simulate`` (on Flower, whose workers load the file)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from pollinate.shared.config import FederationConfig
from pollinate.shared.data import (
    ColumnMapping,
    detect_columns,
    load_dataset,
    parse_columns,
    resolve_columns,
)
from pollinate.shared.errors import ConfigError, DatasetError
from pollinate.shared.tasks import load_task_for
from pollinate.simulations.cli import app

WIDE = {"COLUMNS": "200"}


def write_ratings(path: Path, header: str, users: int = 60, seed: int = 0) -> tuple[int, int]:
    """A small ratings file with planted structure; returns (users, rows)."""
    rng = np.random.default_rng(seed)
    sep = "\t" if path.suffix == ".tsv" else ","
    lines = [header.replace(",", sep)]
    t = 1_600_000_000
    rows = 0
    for u in range(users):
        taste = rng.integers(0, 2)
        for item in rng.choice(40, size=int(rng.integers(8, 16)), replace=False):
            stars = 5 if (item % 2) == taste else 1 + int(rng.integers(0, 3))
            t += 1
            lines.append(sep.join([f"user-{u}", f"sku{item}", str(stars), str(t)]))
            rows += 1
    path.write_text("\n".join(lines) + "\n")
    return users, rows


# --- the column mapping ----------------------------------------------------------------


def test_parse_columns_reads_roles_and_none() -> None:
    assert parse_columns("user=who, item=what,timestamp=") == {
        "user": "who",
        "item": "what",
        "timestamp": None,
    }
    assert parse_columns({"user": "u", "rating": None}) == {"user": "u", "rating": None}
    with pytest.raises(ConfigError, match="unknown role 'usr'"):
        parse_columns("usr=u")
    with pytest.raises(ConfigError, match="not ROLE=COLUMN"):
        parse_columns("user")
    with pytest.raises(ConfigError, match="'user' column is required"):
        parse_columns("user=none")


def test_detection_finds_common_names_and_names_ambiguity() -> None:
    header = ["userId", "movieId", "rating", "timestamp"]
    assert detect_columns(header, {}) == ColumnMapping("userId", "movieId", "rating", "timestamp")
    # Case, "_" and "-" do not matter; a file without ratings is implicit feedback.
    assert detect_columns(["Customer_ID", "product-id"], {}) == ColumnMapping(
        "Customer_ID", "product-id", None, None
    )
    with pytest.raises(DatasetError, match=r"user column is ambiguous: 'user', 'user_id'") as err:
        detect_columns(["user", "user_id", "item"], {})
    assert "--columns user=user" in str(err.value)
    # The mapping settles it, and an explicit "none" leaves a detectable column out.
    assert detect_columns(
        ["user", "user_id", "item", "ts"], {"user": "user_id", "timestamp": None}
    ) == (ColumnMapping("user_id", "item", None, None))
    with pytest.raises(DatasetError, match=r"no item column found.*--columns item=COLUMN"):
        detect_columns(["user", "thing"], {})
    with pytest.raises(DatasetError, match="no column 'stars'"):
        detect_columns(["user", "item"], {"rating": "stars"})


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_own_file_loads_by_path_in_every_format(tmp_path: Path, suffix: str) -> None:
    csv = tmp_path / "ratings.csv"
    users, rows = write_ratings(csv, "who,what,stars,when")
    path = tmp_path / f"ratings{suffix}"
    if suffix == ".tsv":
        write_ratings(path, "who,what,stars,when")
    elif suffix == ".parquet":
        cols = list(
            zip(*(line.split(",") for line in csv.read_text().splitlines()[1:]), strict=True)
        )
        table = pa.table(
            {
                "who": list(cols[0]),
                "what": list(cols[1]),
                "stars": [float(x) for x in cols[2]],
                "when": [int(x) for x in cols[3]],
            }
        )
        pq.write_table(table, path)
    data = load_dataset(str(path), columns="user=who,item=what,rating=stars,timestamp=when")
    assert (data.n_users, data.n_interactions) == (users, rows)
    assert data.ratings is not None and set(np.unique(data.ratings)) <= {1.0, 2.0, 3.0, 5.0}
    assert data.timestamps is not None and np.all(np.diff(data.timestamps) > 0)


def test_a_bad_line_names_the_file_and_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("user,item,rating\n1,10,4\n2,11,four\n")
    with pytest.raises(DatasetError) as err:
        load_dataset(str(path))
    assert f"{path}, line 3" in str(err.value) and "four" in str(err.value)
    with pytest.raises(DatasetError, match="file not found"):
        resolve_columns(tmp_path / "missing.csv")
    with pytest.raises(ConfigError, match="leave --columns out"):
        load_dataset("synthetic", columns="user=u,item=i")


def test_the_config_keeps_an_absolute_path_and_its_mapping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_ratings(tmp_path / "mine.csv", "who,what,stars,when")
    monkeypatch.chdir(tmp_path)
    cfg = FederationConfig.from_mapping(
        {
            "dataset": "mine.csv",
            "columns": {"user": "who", "item": "what", "rating": "stars", "timestamp": "when"},
        }
    )
    # Made absolute: Ray workers do not share the driver's working directory.
    assert cfg.dataset == str(tmp_path / "mine.csv")
    assert cfg.columns == "user=who,item=what,rating=stars,timestamp=when"
    assert load_task_for(cfg).data.n_users == 60
    with pytest.raises(ConfigError, match="--columns maps the columns of your own file"):
        FederationConfig.from_mapping({"dataset": "ml-100k", "columns": "user=u"})


# --- the commands, end to end on a CSV written here --------------------------------------


def test_data_info_and_centralized_run_on_a_csv(tmp_path: Path) -> None:
    path = tmp_path / "shop.csv"
    users, rows = write_ratings(path, "customer_id,sku,stars,ts")
    runner = CliRunner()
    info = runner.invoke(app, ["data", "info", str(path)], env=WIDE)
    assert info.exit_code == 0, info.output
    assert "user=customer_id,item=sku,rating=stars,timestamp=ts" in info.output
    assert f"{rows:,}" in info.output and f"{users}" in info.output

    out = tmp_path / "central"
    done = runner.invoke(
        app,
        [
            "centralized",
            "--dataset",
            str(path),
            "--out",
            str(out),
            "--epochs",
            "2",
        ],
        env=WIDE,
    )
    assert done.exit_code == 0, done.output
    assert f"loading {path}: done" in done.output  # the set-up step's progress line
    report = json.loads((out / "metrics.json").read_text())
    assert report["n_users"] == users and np.isfinite(report["final"]["rmse"])


def test_the_commands_refuse_an_ambiguous_or_broken_file_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "two.csv"
    path.write_text("user,uid,item,rating\n1,1,10,4\n")
    runner = CliRunner()
    for args in (
        ["data", "info", str(path)],
        ["centralized", "--dataset", str(path), "--out", str(tmp_path / "c")],
        ["simulate", "--dataset", str(path), "--out", str(tmp_path / "s")],
    ):
        result = runner.invoke(app, args, env=WIDE)
        assert result.exit_code == 2, (args, result.output)
        assert "ambiguous" in result.output and "--columns user=" in result.output, args


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_simulate_on_flower_reads_the_csv_in_its_workers(tmp_path: Path) -> None:
    """A header no detection knows: only the mapping carried by the config lets the Ray
    workers load the file."""
    path = tmp_path / "odd.csv"
    users, _ = write_ratings(path, "a,b,c,d")
    out = tmp_path / "run"
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "--dataset",
            str(path),
            "--columns",
            "user=a,item=b,rating=c,timestamp=d",
            "--rounds",
            "2",
            "--sample-rate",
            "0.5",
            "--eval-every",
            "0",
            "--no-progress",
            "--out",
            str(out),
        ],
        env=WIDE,
    )
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["devices"] == users and summary["rounds_completed"] == 2
    assert np.isfinite(summary["final"]["rmse"])
    assert summary["config"]["columns"] == "user=a,item=b,rating=c,timestamp=d"
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(h.get("aggregated", 0) for h in history) > 0
    # The audit reads the file again through the run's config.json (absolute path and
    # mapping): a run without DP is reported as not private (exit 3), with its report.
    audited = CliRunner().invoke(app, ["audit", str(out), "--out", str(tmp_path / "r")], env=WIDE)
    assert audited.exit_code == 3, audited.output
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["verdict"] == "not-private" and report["run"]["dataset"] == str(path)
