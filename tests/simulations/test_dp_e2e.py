"""End to end with both DP layers: Opacus on every device, user-level DP on the server,
on Flower's simulation runtime. The ledger alone must give back every ε."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld

from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.ledger import read_ledger, recompute
from pollinate.simulations.engine import run_federation

pytestmark = pytest.mark.slow

DP_RUN = {
    "dataset": "synthetic",
    "synthetic-users": 60,
    "synthetic-items": 50,
    "embedding-dim": 4,
    "rounds": 4,
    "sample-rate": 0.5,
    "eval-every": 2,
    "eval-sample-rate": 1.0,
    "progress": False,
    "dp": "both",
    "local-noise": 1.0,
    "local-clip": 0.5,
    "user-noise": 1.0,
    "user-clip": 0.1,
    "user-accountant": "rdp",
    "server-opt": "fedavg",
    "server-lr": 1.0,
    "noise-seed": 5,
    # Devices answer evaluations with noised sums, each charged to their ε.
    "local-evaluation": "noised",
    "local-eval-noise": 5.0,
}


def simulate(out: Path, **overrides: Any) -> Path:
    cfg = FederationConfig.from_mapping(
        {**DP_RUN, "out": str(out), "device-state-dir": str(out / "devices"), **overrides}
    )
    run_federation(cfg)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("dp") / "both")


def test_ledger_has_one_event_per_release_and_recomputes(dp_run: Path) -> None:
    events = read_ledger(dp_run / "ledger.jsonl")
    history = [h for h in read_jsonl(dp_run / "metrics.jsonl") if h["round"] >= 1]
    user = [e for e in events if e.layer == "user"]
    local = [e for e in events if e.layer == "local"]
    assert [e.round for e in user] == [1, 2, 3, 4]  # every round, empty or not
    trained = [e for e in local if e.kind == "train"]
    assert len(trained) == sum(h["aggregated"] for h in history)
    # Devices answered the evaluations (the baseline, rounds 2 and 4, and the final test
    # as round 5) with noised releases, one event each; a device with no held-out row
    # releases nothing that depends on its data and is not charged.
    evaluated = [e for e in local if e.kind == "evaluate"]
    assert {e.round for e in evaluated} == {0, 2, 4, 5}
    assert len({(e.device, e.round) for e in evaluated}) == len(evaluated)
    assert all(e.sample_rate == 1.0 and e.steps == 1 for e in evaluated)
    assert {e.neighbouring for e in local} == {"replace_one"}
    assert {e.neighbouring for e in user} == {"add_remove"}
    assert recompute(events).worst_relative_error < 1e-6
    # Independently: one device's ε with dp-accounting's PLD, replace-one, over all its
    # releases (training rounds and evaluations).
    device = max({e.device for e in trained}, key=lambda d: sum(e.device == d for e in trained))
    own = sorted((e for e in local if e.device == device), key=lambda e: (e.round, e.kind))
    acc = pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for e in own:
        g = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        acc.compose(
            g if e.sample_rate >= 1 else dp_accounting.PoissonSampledDpEvent(e.sample_rate, g),
            e.steps,
        )
    assert max(e.epsilon for e in own) == pytest.approx(acc.get_epsilon(own[-1].delta), rel=0.01)
    assert own[-1].epsilon > own[0].epsilon


def test_metrics_json_reports_both_layers_from_the_ledger(dp_run: Path) -> None:
    summary = json.loads((dp_run / "metrics.json").read_text())
    privacy = summary["privacy"]
    events = read_ledger(dp_run / "ledger.jsonl")
    last_user = max((e for e in events if e.layer == "user"), key=lambda e: e.round)
    assert privacy["user"]["epsilon"] == pytest.approx(last_user.epsilon)
    assert privacy["user"]["delta"] == pytest.approx(1e-5)
    assert privacy["local"]["epsilon_max"] == pytest.approx(
        max(e.epsilon for e in events if e.layer == "local")
    )
    assert "SEEDED" in privacy["user"]["noise_source"]
    # The released figures come from the devices' noised sums; the simulation's own
    # scoring of the same model sits beside them, labelled.
    assert summary["final_source"] == "noised evaluation releases of the devices"
    assert np.isfinite(summary["final"]["rmse"])
    assert np.isfinite(summary["oracle"]["final"]["rmse"])
    released = json.loads((dp_run / "release" / "metrics.json").read_text())
    assert released["final"]["rmse"] == pytest.approx(summary["final"]["rmse"])


def test_dp_updates_are_dense_and_carry_no_training_loss(dp_run: Path) -> None:
    msgs = read_jsonl(dp_run / "messages.jsonl")
    ups = [m for m in msgs if m["direction"] == "up" and m["kind"] == "train"]
    assert ups
    for m in ups:
        assert "train-loss" not in m["metrics"]
        assert "local-epsilon" in m["metrics"]
        assert not any("user" in k for k in m["arrays"])


def test_the_checks_of_the_shared_folder_pass(dp_run: Path) -> None:
    import subprocess
    import sys

    checks = Path(__file__).resolve().parents[3] / "shared" / "checks"
    if not checks.is_dir():
        pytest.skip("../shared/checks is not beside this checkout")
    for script in ("ledger_recompute.py", "allowlist.py"):
        done = subprocess.run(
            [sys.executable, str(checks / script), str(dp_run)], capture_output=True, text=True
        )
        assert done.returncode == 0, done.stdout + done.stderr


def test_a_device_budget_stops_devices_and_the_log_counts_them(tmp_path: Path) -> None:
    out = simulate(
        tmp_path / "budget",
        # z = 2 at q = 0.5, 2 steps a round, replace-one: ε ≈ 2.9 after one round, 4.2
        # after two, 5.4 after three, so every device stops before its third round.
        **{"dp": "local", "user-noise": None, "user-clip": 0.05, "local-epsilon-budget": 5.0,
           "rounds": 3, "sample-rate": 1.0, "local-noise": 2.0, "eval-every": 0,
           "local-evaluation": "refuse"},
    )  # fmt: skip
    history = [h for h in read_jsonl(out / "metrics.jsonl") if h["round"] >= 1]
    assert [h["dp_stopped"] for h in history] == [0, 0, 60]
    assert history[-1]["aggregated"] == 0
    assert all(h["local_epsilon_max"] <= 5.0 for h in history)
    events = read_ledger(out / "ledger.jsonl")
    assert len(events) == 120 and max(e.epsilon for e in events) <= 5.0
    # Every device refused the final evaluation (its policy's default): the figures are
    # the simulation's own scoring of the released model, and nothing is released.
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["final_source"].startswith("simulation oracle")
    assert np.isfinite(summary["final"]["rmse"])
    assert not json.loads((out / "release" / "metrics.json").read_text())["final"]
