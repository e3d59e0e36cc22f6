"""docs/experiments/scripts/paired.py: the paired difference of two runs' per-device values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/paired.py"


def write(path: Path, values: list[float | None]) -> None:
    rows = [
        {"device": u, "count": 0.0} if v is None else {"device": u, "count": 1.0, "ndcg@10_sum": v}
        for u, v in enumerate(values)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_paired_difference_and_its_standard_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, 50)
    b = a - 0.05 + rng.normal(0, 0.01, 50)
    write(tmp_path / "a.jsonl", [*a.tolist(), None])  # a device with no test user: skipped
    write(tmp_path / "b.jsonl", [*b.tolist(), 0.3])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = json.loads(done.stdout)
    d = a - b
    assert out["devices"] == 50
    assert out["a_minus_b"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(50), rel=1e-12)
    # Paired, the SE is far below that of either run's mean: the users' noise cancels.
    assert out["se"] < 0.1 * a.std(ddof=1) / np.sqrt(50)


def test_several_runs_a_side_are_averaged_device_by_device(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = rng.uniform(0, 1, (2, 40))
    b = rng.uniform(0, 1, (3, 40))
    names = {}
    for side, values in (("a", a), ("b", b)):
        paths = []
        for i, row in enumerate(values):
            path = tmp_path / f"{side}{i}.jsonl"
            # device 39 is missing from one run of b only: it is left out of every mean
            write(path, [*row[:39].tolist(), None if (side, i) == ("b", 1) else row[39]])
            paths.append(str(path))
        names[side] = ",".join(paths)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), names["a"], names["b"]],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    out = json.loads(done.stdout)
    d = a[:, :39].mean(axis=0) - b[:, :39].mean(axis=0)
    assert out["devices"] == 39
    assert out["a_minus_b"] == pytest.approx(d.mean(), rel=1e-12)
    assert out["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(39), rel=1e-12)
    assert out["a_runs"] == pytest.approx(a[:, :39].mean(axis=1).tolist(), rel=1e-12)
    assert out["b_runs"] == pytest.approx(b[:, :39].mean(axis=1).tolist(), rel=1e-12)


def test_runs_of_different_sizes_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a0.jsonl", [0.1, 0.2])
    write(tmp_path / "a1.jsonl", [0.1, 0.2, 0.3])
    write(tmp_path / "b.jsonl", [0.1, 0.2])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), f"{tmp_path / 'a0.jsonl'},{tmp_path / 'a1.jsonl'}",
         str(tmp_path / "b.jsonl")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert done.returncode != 0 and "different numbers of devices" in done.stderr
