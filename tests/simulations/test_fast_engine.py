"""The fast engine runs the Flower engine's device and server code: with the same seed it
gives the same figures and the same ledger, it runs across Ray nodes, and ``pollinate
sweep`` draws a privacy-utility curve on it.

Every fast run of this module shares one Ray session (started once, by the module
fixture); each Flower reference starts its own. Each test has a pytest-timeout so that a
hung cluster fails in minutes.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pollinate.shared.config import FederationConfig
from pollinate.simulations.cli import app
from pollinate.simulations.fast import FastEngineError, run_fast
from pollinate.simulations.fast.engine import check_supported

BASE: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic-users": 50,
    "synthetic-items": 30,
    "embedding-dim": 4,
    "rounds": 1,
    "sample-rate": 0.5,
    "eval-every": 1,
    "progress": False,
    "seed": 3,
}
#: Both DP layers, seeded, with noised evaluation releases, over two rounds: every path
#: of a device step (DP-SGD, the device ledger and the state it keeps between rounds, a
#: noised evaluation) and of the server (clipping, noise, the accountant over rounds).
BOTH: dict[str, Any] = {
    "rounds": 2,
    "dp": "both",
    "local-noise": 1.0,
    "local-clip": 0.5,
    "user-noise": 1.0,
    "user-clip": 0.1,
    "user-accountant": "rdp",
    "noise-seed": 1,
    "local-evaluation": "noised",
}


def config(out: Path, **more: Any) -> FederationConfig:
    flat = {**BASE, **more, "out": str(out), "device-state-dir": str(out / "devices")}
    return FederationConfig.from_mapping(flat)


def flower(cfg: FederationConfig) -> None:
    from pollinate.simulations.engine import run_federation

    run_federation(cfg)


class CrashError(Exception):
    """The driver dies in the middle of a round."""


def crash_in(round_: int) -> Any:
    """An ``on_round`` that raises after round ``round_``'s server step, before its
    checkpoint: its releases are made and accounted, its state is not saved."""

    def on_round(r: int, params: Any) -> None:
        if r == round_:
            raise CrashError

    return on_round


@pytest.fixture(scope="module")
def fast_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The module's fast runs and sweep, in one Ray session: ``plain`` (no DP, one
    worker), ``both`` (both DP layers, two workers), ``crashed`` (``both`` killed in round
    2, resumed on one worker) and ``sweep`` (``pollinate sweep``)."""
    import ray

    from pollinate.simulations.fast.pool import connect

    root = tmp_path_factory.mktemp("fast")
    started = connect(None, num_cpus=2)
    try:
        run_fast(config(root / "plain"), workers=1)
        run_fast(config(root / "both", **BOTH), workers=2)
        with pytest.raises(CrashError):
            run_fast(config(root / "crashed", **BOTH), workers=2, on_round=crash_in(2))
        saved = json.loads((root / "crashed" / "config.json").read_text())
        run_fast(FederationConfig.from_mapping(saved), workers=1, resume=True)
        flags = [f"--set={k}={v}" for k, v in BASE.items() if k not in ("rounds", "progress")]
        done = CliRunner().invoke(
            app,
            ["sweep", "--epsilons", "4", "--out", str(root / "sweep"), "--rounds", "1",
             "--set", "user-clip=0.1", "--set", "noise-seed=1", "--workers", "2",
             "--no-progress", *flags],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
    finally:
        if started:
            ray.shutdown()
    yield root


def rounds(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def ledger(out: Path) -> list[str]:
    """The run ledger's events, order-free (devices reply in any order on Flower)."""
    return sorted((out / "ledger.jsonl").read_text().splitlines())


def assert_close(a: Any, b: Any, rel: float = 1e-6) -> None:
    if isinstance(a, dict):
        assert set(a) == set(b)
        for k in a:
            assert_close(a[k], b[k], rel)
    elif isinstance(a, float) or isinstance(b, float):
        assert a == pytest.approx(b, rel=rel, abs=1e-12)
    else:
        assert a == b


def messages(out: Path) -> list[dict[str, Any]]:
    """``messages.jsonl``, order-free and without node ids (Flower's are its own)."""
    lines = [json.loads(x) for x in (out / "messages.jsonl").read_text().splitlines()]
    lines = [{k: v for k, v in m.items() if k != "node"} for m in lines]
    return sorted(lines, key=lambda m: json.dumps(m, sort_keys=True))


def same_run(fast: Path, flw: Path) -> None:
    """Same sampling, counts and figures (to 1e-6 relative: a sum of float32 updates in
    another order may differ in its last bits), every round and at the end."""
    a, b = rounds(fast), rounds(flw)
    assert [r["round"] for r in a] == [r["round"] for r in b]
    for x, y in zip(a, b, strict=True):
        for key in ("sampled", "aggregated", "rejected", "failed", "examples", "eval_devices"):
            assert x.get(key) == y.get(key), key
        for key in ("eval", "train_loss", "user_epsilon", "local_epsilon_max",
                    "update_norm_median", "update_norm_max"):  # fmt: skip
            assert_close(x.get(key), y.get(key))
    sa, sb = (json.loads((d / "metrics.json").read_text()) for d in (fast, flw))
    assert sa["final"] and set(sa["final"]) == set(sb["final"])
    assert_close(sa["final"], sb["final"])
    assert_close(sa["final_se"], sb["final_se"])
    assert sa["engine"].startswith("fast") and "engine" not in sb
    # The release directory is written as on Flower.
    for name in ("model.npz", "privacy.json", "metrics.json", "config.json"):
        assert (fast / "release" / name).exists()
    # The message log says what Flower's does, line for line: the fast engine writes each
    # reply's line from its arrays and metrics without packing them into a message.
    ma, mb = messages(fast), messages(flw)
    assert len(ma) == len(mb)
    for x, y in zip(ma, mb, strict=True):
        assert set(x) == set(y)
        assert_close(x, y)
    trained = [m for m in ma if m["direction"] == "up" and m["kind"] == "train"]
    assert len(trained) == sum(r.get("sampled", 0) for r in a)


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_without_dp_the_fast_engine_gives_flowers_figures(fast_runs: Path, tmp_path: Path) -> None:
    flower(config(tmp_path / "flower"))
    same_run(fast_runs / "plain", tmp_path / "flower")
    assert (fast_runs / "plain" / "ledger.jsonl").read_text() == ""  # nothing accounted


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(240)
def test_with_both_dp_layers_the_fast_engine_gives_flowers_figures_and_ledger(
    fast_runs: Path, tmp_path: Path
) -> None:
    fast, flw = fast_runs / "both", tmp_path / "flower"
    flower(config(flw, **BOTH))
    same_run(fast, flw)
    events = ledger(fast)
    assert events == ledger(flw)
    kinds = {(json.loads(e)["layer"], json.loads(e)["kind"]) for e in events}
    assert kinds == {("user", "train"), ("local", "train"), ("local", "evaluate")}
    # Each device charged its own ledger too, event for event.
    local = [e for e in events if json.loads(e)["layer"] == "local"]
    own = [
        line
        for path in sorted((fast / "devices").glob("device-*/ledger.jsonl"))
        for line in path.read_text().splitlines()
    ]
    assert sorted(own) == local


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_crashed_fast_run_resumes_to_the_same_figures_and_over_counts_its_epsilon(
    fast_runs: Path,
) -> None:
    """Killed after round 2's releases and before its checkpoint, then resumed on another
    number of workers: the devices' private parameters come back from the snapshot of
    round 1, so round 2 is trained again exactly (every figure as the uninterrupted run's)
    while the releases of the lost attempt stay in every ledger: ε is over-counted, never
    under-counted, and every recorded ε recomputes."""
    from pollinate.shared.privacy.ledger import read_ledger, recompute

    crashed, whole = fast_runs / "crashed", fast_runs / "both"
    a, b = rounds(crashed), rounds(whole)
    assert [r["round"] for r in a] == [r["round"] for r in b] == [0, 1, 2]
    for x, y in zip(a, b, strict=True):
        for key in ("sampled", "aggregated", "examples", "eval_devices"):
            assert x.get(key) == y.get(key), key
        for key in ("eval", "train_loss", "update_norm_median", "update_norm_max"):
            assert_close(x.get(key), y.get(key))
    sa, sb = (json.loads((d / "metrics.json").read_text()) for d in (crashed, whole))
    assert_close(sa["final"], sb["final"])
    # Round 2 was released twice: once before the crash, once after the resume.
    assert a[2]["user_epsilon"] > b[2]["user_epsilon"]
    assert a[2]["local_epsilon_max"] > b[2]["local_epsilon_max"]
    events = read_ledger(crashed / "ledger.jsonl")
    again = recompute(events)
    assert again.worst_relative_error < 1e-6
    theirs = recompute(read_ledger(whole / "ledger.jsonl"))
    assert set(theirs.local) <= set(again.local)
    assert all(again.local[d] >= eps * (1 - 1e-9) for d, eps in theirs.local.items())
    assert sum(again.local[d] > eps * (1 + 1e-6) for d, eps in theirs.local.items()) > 0
    assert [e.round for e in events if e.layer == "user"] == [1, 2, 2]
    runs = json.loads((crashed / "environment.json").read_text())["runs"]
    assert [r["resumed"] for r in runs] == [False, True]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_sweep_writes_the_curve_beside_its_references(fast_runs: Path) -> None:
    out = fast_runs / "sweep"
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["point"] for r in rows] == ["eps-4", "none", "centralized"]
    eps4, none, central = rows
    # Each point's ε is the one its ledger spent, within the target.
    assert 0 < float(eps4["user_epsilon"]) <= 4 * (1 + 1e-9)
    assert eps4["layer"] == "user" and none["user_epsilon"] == ""
    for row in rows:
        assert float(row["rmse"]) > 0
        assert Path(row["run"]).is_dir()
    summary = json.loads((out / "eps-4" / "metrics.json").read_text())
    assert float(eps4["rmse"]) == summary["final"]["rmse"]
    assert summary["privacy"]["user"]["epsilon"] == float(eps4["user_epsilon"])
    assert "eps-4" in (out / "sweep.md").read_text()
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert float(central["rmse"]) != float(none["rmse"])


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(180)
def test_the_fast_engine_runs_on_two_ray_nodes(fast_runs: Path, tmp_path: Path) -> None:
    """Two raylets on loopback (a head and a worker node, each with one CPU): the shards
    run on both, and the run gives the figures of one worker on one machine."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        run_fast(config(tmp_path / "two"), ray_address=cluster.address)
    finally:
        import ray

        ray.shutdown()
        cluster.shutdown()
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    one = json.loads((fast_runs / "plain" / "metrics.json").read_text())
    assert two["workers"] == 2 and two["worker_nodes"] == 2
    assert one["workers"] == 1
    assert_close(two["final"], one["final"])


def test_the_fast_engine_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    check_supported(config(tmp_path))
    with pytest.raises(FastEngineError, match="--engine flower"):
        check_supported(config(tmp_path, **{"audit-canaries": 10}))


def test_pass_through_options_come_in_key_value_pairs() -> None:
    from pollinate.shared.errors import ConfigError
    from pollinate.simulations.fast.engine import config_flags

    assert config_flags(["--dp", "local", "--local-noise", "1.0", "--rounds", "3"]) == {
        "dp": "local", "local-noise": 1.0, "rounds": 3}  # fmt: skip
    with pytest.raises(ConfigError, match="'--rounds' has no value"):
        config_flags(["--dp", "none", "--rounds"])
