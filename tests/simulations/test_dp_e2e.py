"""End to end with both DP layers: Opacus on every device, user-level DP on the server,
on Flower's simulation runtime. The ledger alone must give back every ε."""

from __future__ import annotations

import itertools
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


def _pld_epsilon(events: list[Any]) -> float:
    """ε of one party's events with dp-accounting's PLD under the relation they name,
    composed in (round, train before evaluate) order: independent of pollinate's code."""
    relation = dp_accounting.NeighboringRelation
    acc = pld.PLDAccountant(
        neighboring_relation=relation.REPLACE_ONE
        if events[0].neighbouring == "replace_one"
        else relation.ADD_OR_REMOVE_ONE
    )
    for e in sorted(events, key=lambda e: (e.round, e.kind != "train")):
        g = dp_accounting.GaussianDpEvent(e.noise_multiplier)
        acc.compose(
            g if e.sample_rate >= 1 else dp_accounting.PoissonSampledDpEvent(e.sample_rate, g),
            e.steps,
        )
    return float(acc.get_epsilon(events[-1].delta))


def test_no_epsilon_is_under_reported_and_the_summary_agrees(dp_run: Path) -> None:
    """Every party's recorded ε (each device, the server) is at least the ε recomputed from
    the ledger alone; for the server and three devices (fewest, median and most releases)
    that is checked again against dp-accounting's PLD called here directly (2%
    discretisation slack). A device's ε grows over its rounds, and metrics.json states
    the largest of them."""
    events = read_ledger(dp_run / "ledger.jsonl")
    parties: dict[str, list[Any]] = {}
    for e in events:
        parties.setdefault("server" if e.layer == "user" else str(e.device), []).append(e)
    assert "server" in parties and len(parties) > 2
    fresh = recompute(events)
    last = {
        who: max(evs, key=lambda e: (e.round, e.kind != "train")) for who, evs in parties.items()
    }
    for who, event in last.items():
        again = fresh.user if who == "server" else fresh.local[who]
        assert again is not None and event.epsilon >= again * (1 - 1e-9), who
    devices = sorted((w for w in parties if w != "server"), key=lambda w: len(parties[w]))
    for who in ("server", devices[0], devices[len(devices) // 2], devices[-1]):
        assert last[who].epsilon >= _pld_epsilon(parties[who]) * 0.98, who
    for who, evs in parties.items():
        trains = sorted((e for e in evs if e.kind == "train"), key=lambda e: e.round)
        assert all(b.epsilon > a.epsilon for a, b in itertools.pairwise(trains)), who
    privacy = json.loads((dp_run / "metrics.json").read_text())["privacy"]
    local_max = max(e.epsilon for e in events if e.layer == "local")
    assert privacy["local"]["epsilon_max"] == pytest.approx(local_max, rel=1e-9)


def test_devices_send_up_only_the_global_arrays_they_were_sent(dp_run: Path) -> None:
    """The allow-list, from the wire log: every array a device sent up has the name and
    the shape of an array the server sent down, and none is a private (``user``) array."""
    msgs = read_jsonl(dp_run / "messages.jsonl")
    down: dict[str, tuple[int, ...]] = {}
    for m in msgs:
        if m["direction"] == "down" and m["kind"] == "train":
            down |= {k: tuple(v) for k, v in m["arrays"].items()}
    ups = [m for m in msgs if m["direction"] == "up" and m["arrays"]]
    assert down and ups
    for m in ups:
        for name, shape in m["arrays"].items():
            assert down.get(name) == tuple(shape), (m["node"], m["round"], name)


def test_the_audit_report_recomputes_the_run_and_passes_its_ledger_checks(dp_run: Path) -> None:
    """pollinate's own auditor on the run: the recomputation of both layers, the
    allow-list on the wire log and the published summary all pass (the noise-source check
    fails by design: this run's noise is seeded)."""
    from pollinate.audit.report import build_report

    report = build_report(dp_run)
    checks = {c["name"]: c for c in report["checks"]}
    for name in ("recomputation: local", "recomputation: user", "allow-list",
                 "published privacy summary matches the ledger"):  # fmt: skip
        assert checks[name]["passed"], checks[name]
    assert not checks["noise source (trust model)"]["passed"]


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
