"""docs/experiments/scripts/weight_scales.py: per-array sizes of two weight files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/weight_scales.py"


def test_sizes_and_ratios_against_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    item = rng.normal(0, 0.1, (30, 4)).astype(np.float32)
    bias = rng.normal(0, 0.2, (30, 1)).astype(np.float32)
    np.savez(tmp_path / "a.npz", **{"item.weight": item, "bias.weight": bias})
    np.savez(
        tmp_path / "b.npz",
        **{"item.weight": 3 * item, "bias.weight": bias, "user.weight": np.ones((5, 4))},
    )
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path / "a.npz"), str(tmp_path / "b.npz")],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["array"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert list(rows) == ["item.weight", "bias.weight", "user.weight"]
    item64 = item.astype(np.float64)
    assert rows["item.weight"]["a"]["rms"] == pytest.approx(np.sqrt((item64**2).mean()))
    assert rows["item.weight"]["a"]["absmax"] == pytest.approx(np.abs(item64).max())
    assert rows["item.weight"]["a"]["row_norm_median"] == pytest.approx(
        np.median(np.linalg.norm(item64, axis=1))
    )
    assert rows["item.weight"]["rms_ratio_b_over_a"] == pytest.approx(3.0)
    assert rows["bias.weight"]["rms_ratio_b_over_a"] == pytest.approx(1.0)
    # An array only one side holds is listed with that side alone.
    assert "a" not in rows["user.weight"] and rows["user.weight"]["b"]["rms"] == 1.0
