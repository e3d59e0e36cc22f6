"""docs/experiments/scripts/iterate_average.py: its offline average must score exactly what
a run trained with ``server-ema`` releases."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pollinate.shared.config import FederationConfig
from pollinate.simulations.fast import run_fast

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/iterate_average.py"
CONFIG = {
    "dataset": "synthetic",
    "synthetic-users": 60,
    "synthetic-items": 50,
    "embedding-dim": 4,
    "task": "ranking",
    "rounds": 4,
    "sample-rate": 0.6,
    "seed": 5,
}


@pytest.mark.ray
@pytest.mark.timeout(600)
def test_the_scored_average_is_the_released_model_of_a_server_ema_run(tmp_path: Path) -> None:
    flags = [str(a) for k, v in CONFIG.items() for a in (f"--{k}", v)]
    subprocess.run(
        [sys.executable, str(SCRIPT), "train", "--out", str(tmp_path / "run"), "--log-every",
         "0", *flags],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "run" / "rounds").iterdir()) == [
        f"round-{r}.npz" for r in range(1, 5)
    ]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "score", str(tmp_path / "run"), "--ema", "0.6",
         "--per-device", str(tmp_path / "dev")],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    rows = {r["model"]: r for r in map(json.loads, done.stdout.splitlines())}
    cfg = {**CONFIG, "progress": False, "eval-every": 0}
    plain = run_fast(FederationConfig.from_mapping({**cfg, "out": str(tmp_path / "plain")}))
    ema = run_fast(
        FederationConfig.from_mapping({**cfg, "server-ema": 0.6, "out": str(tmp_path / "ema")})
    )
    assert rows["last"]["test"] == pytest.approx(plain["final"], rel=1e-9)
    assert rows["ema0.6"]["test"] == pytest.approx(ema["final"], rel=1e-9)
    assert rows["ema0.6"]["test"] != rows["last"]["test"]
    per_device = (tmp_path / "dev-ema0.6.jsonl").read_text().splitlines()
    assert len(per_device) == CONFIG["synthetic-users"]
    valid = [json.loads(line) for line in (tmp_path / "dev-ema0.6-valid.jsonl").open()]
    assert len(valid) == CONFIG["synthetic-users"]
    assert valid != [json.loads(line) for line in per_device]
    ndcg = sum(v["ndcg@10_sum"] for v in valid) / sum(v["count"] for v in valid)
    assert ndcg == pytest.approx(rows["ema0.6"]["valid"]["ndcg@10"], rel=1e-9)
