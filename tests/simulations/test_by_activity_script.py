"""docs/experiments/scripts/by_activity.py: per-device values grouped by training rows."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/by_activity.py"


def test_groups_split_by_training_rows_with_paired_differences(load_benchmark: Any) -> None:
    rows = np.array([5, 1, 9, 3, 7, 2, 8, 4])
    a = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2, 0.8, 0.4])
    b = a + np.array([0.0, 0.1, 0.2, 0.0, 0.1, 0.0, 0.3, 0.1])
    out = load_benchmark("by_activity").grouped(rows, [a, b], 2)
    light, heavy = out  # rows 1-4 and 5-9
    assert light["train_rows"] == [1, 4] and heavy["train_rows"] == [5, 9]
    assert light["means"][0] == pytest.approx(np.mean([0.1, 0.3, 0.2, 0.4]))
    d_heavy = np.array([0.0, 0.2, 0.1, 0.3])
    assert heavy["minus_first"][0]["mean"] == pytest.approx(d_heavy.mean())
    assert heavy["minus_first"][0]["se"] == pytest.approx(d_heavy.std(ddof=1) / 2)


def test_the_script_reads_a_run_config_and_per_device_files(
    tmp_path: Path, load_benchmark: Any
) -> None:
    config = {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 40,
              "task": "ranking", "model": "interest"}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    rows = load_benchmark("by_activity").train_rows(tmp_path / "config.json")
    values = np.linspace(0, 1, rows.size)
    lines = [
        json.dumps({"device": u, "count": 1.0, "ndcg@10_sum": float(v)})
        for u, v in enumerate(values)
    ]
    (tmp_path / "a.jsonl").write_text("\n".join(lines) + "\n")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "config.json"), str(tmp_path / "a.jsonl"),
         str(tmp_path / "a.jsonl"), "--groups", "3"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    groups = [json.loads(line) for line in done.stdout.splitlines()[1:]]
    assert len(groups) == 3 and sum(g["devices"] for g in groups) == rows.size
    order = np.argsort(rows, kind="stable")
    for g, chunk in zip(groups, np.array_split(order, 3), strict=True):
        assert g["means"][0] == pytest.approx(values[chunk].mean())
        assert g["minus_first"][0]["mean"] == 0.0
