"""``pollinate demo``: its no-federation baseline, its table, and (small, slow) the whole
demo on Flower with the audit at its end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from pollinate.shared.tasks import load_task
from pollinate.simulations.demo import (
    ROW_NAMES,
    DemoSettings,
    Row,
    per_user_mean_baseline,
    plot_summary,
    run_demo,
    summary_markdown,
)


def test_the_baseline_is_each_users_own_mean_rating() -> None:
    """Pinned against a loop over the rows: a user's test ratings are predicted by the
    mean of their training ratings (the scale's midpoint without any)."""
    users, items, seed = 80, 40, 3
    got = per_user_mean_baseline(users, items, seed)
    task = load_task(
        "synthetic", task="rating", seed=seed, synthetic_users=users, synthetic_items=items
    )
    data = task.data
    assert data.ratings is not None and data.rating_scale is not None
    own: dict[int, list[float]] = {}
    for row in task.split.train:
        own.setdefault(int(data.users[row]), []).append(float(data.ratings[row]))
    midpoint = sum(data.rating_scale) / 2
    errors = []
    for row in task.split.test:
        seen = own.get(int(data.users[row]))
        guess = sum(seen) / len(seen) if seen else midpoint
        errors.append(guess - float(data.ratings[row]))
    assert got["rmse"] == pytest.approx(math.sqrt(sum(e * e for e in errors) / len(errors)))
    assert got["mae"] == pytest.approx(sum(abs(e) for e in errors) / len(errors))


def test_the_table_has_a_row_per_model_with_its_metric_and_command(tmp_path: Path) -> None:
    rows = [
        Row(name, 0.9 + i / 100, 0.7, f"privacy {i}", f"pollinate cmd {i}")
        for i, name in enumerate(ROW_NAMES)
    ]
    table = summary_markdown(rows).splitlines()
    assert table[0].startswith("| model | test RMSE")
    assert [line.split(" | ")[0].lstrip("| ") for line in table[2:]] == list(ROW_NAMES)
    assert "| 0.9200 |" in table[4] and "`pollinate cmd 2`" in table[4]
    plot_summary(rows, {ROW_NAMES[1]: [(0, 1.2), (2, 1.0)], ROW_NAMES[2]: []}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_small_demo_writes_its_table_plot_and_audit_report(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    result = run_demo(
        DemoSettings(
            out=out,
            users=60,
            items=40,
            rounds=2,
            sample_rate=0.5,
            canaries=10,
            eval_every=1,
            centralized_epochs=2,
        )
    )
    names = [row["name"] for row in result["rows"]]
    assert names == [ROW_NAMES[0], ROW_NAMES[1], ROW_NAMES[2], ROW_NAMES[3]]
    assert all(math.isfinite(row["rmse"]) for row in result["rows"])
    private = result["rows"][2]
    assert result["epsilon"] is not None and "ε = " in private["privacy"]
    # The ε in the table is the run's own ledger figure, at most the target.
    assert result["epsilon"] <= 8.0 + 1e-6
    summary = (out / "summary.md").read_text()
    for name in ROW_NAMES:
        assert f"| {name} |" in summary
    assert "pollinate simulate --config" in summary
    assert (out / "summary.png").stat().st_size > 1000
    assert result["audit"]["verdict"] in ("pass", "fail", "not-private")
    assert Path(result["audit"]["report"]).is_file()
    assert json.loads((out / "summary.json").read_text())["rows"] == result["rows"]
