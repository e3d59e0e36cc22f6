"""simulations/benchmarks/paired.py: the paired difference of two runs' per-device values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "simulations/benchmarks/paired.py"


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
