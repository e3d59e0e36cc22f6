"""docs/experiments/scripts/step_dynamics.py: how consecutive server steps line up."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/step_dynamics.py"


def _module():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("step_dynamics", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _write_rounds(run: Path, iterates: list[dict[str, np.ndarray]]) -> None:
    (run / "rounds").mkdir(parents=True)
    for r, x in enumerate(iterates, start=1):
        np.savez(run / "rounds" / f"round-{r}.npz", **x)


def test_drifting_and_oscillating_arrays(tmp_path: Path) -> None:
    # "drift" moves by the same step every round; "osc" steps +d, -d, +d, ...; "half"
    # steps 2d then -d: consecutive cosines -1, net/path 1/3 per pair of steps.
    rng = np.random.default_rng(0)
    d = rng.normal(size=(5, 3))
    iterates = []
    for r in range(9):
        iterates.append(
            {
                "drift": r * d,
                "osc": (r % 2) * d,
                "half": (r // 2 + 2 * (r % 2)) * d,
            }
        )
    _write_rounds(tmp_path, iterates)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path), "--last", "3", "--from-round", "1"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {r["array"]: r for r in map(json.loads, done.stdout.splitlines())}
    assert rows["drift"]["cos_early"] == pytest.approx(1.0)
    assert rows["drift"]["cos_late"] == pytest.approx(1.0)
    assert rows["drift"]["net_over_path"] == pytest.approx(1.0)
    assert rows["osc"]["cos_late"] == pytest.approx(-1.0)
    # 8 steps of |d| each, back where it started after an even number of them.
    assert rows["osc"]["net_over_path"] == pytest.approx(0.0)
    # half: steps 2d, -d, 2d, -d, ... from 0: after 8 steps at 4d, path 12|d|.
    assert rows["half"]["cos_late"] == pytest.approx(-1.0)
    assert rows["half"]["net_over_path"] == pytest.approx(4 / 12)


def test_rows_grouped_by_popularity() -> None:
    mod = _module()
    # Row 0 (rare) drifts, row 1 (popular) oscillates, row 2 never moves.
    iterates = [np.array([[r, 0.0], [r % 2, r % 2], [1.0, 1.0]]) for r in range(6)]
    rows = mod.by_popularity(iterates, np.array([1.0, 50.0, 7.0]), last=2, from_index=0, groups=3)
    assert [r["popularity"] for r in rows] == [[1.0, 1.0], [7.0, 7.0], [50.0, 50.0]]
    rare, still, popular = rows
    assert rare["cos_late"] == pytest.approx(1.0) and rare["net_over_path"] == 1.0
    assert popular["cos_late"] == pytest.approx(-1.0)
    assert popular["net_over_path"] == pytest.approx(1 / 5)
    assert still["cos_late"] == 0.0 and still["step"] == 0.0
    assert rare["row_norm"] == pytest.approx(5.0) and rare["step"] == pytest.approx(0.5)


def test_too_few_rounds_is_refused(tmp_path: Path) -> None:
    _write_rounds(tmp_path, [{"a": np.zeros(2)}, {"a": np.ones(2)}])
    done = subprocess.run(
        [sys.executable, str(SCRIPT), str(tmp_path)], capture_output=True, text=True
    )
    assert done.returncode != 0 and "need at least 3" in done.stderr
