"""User-level DP on the server: clipping, noise, divisor, accounting, budget, ledger."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.server.federation import RoundResult, Server
from pollinate.server.privacy import UserPrivacy
from pollinate.server.runlog import JsonlWriter
from pollinate.server.user_dp import (
    ClippedSum,
    clip_update,
    default_user_delta,
    noise_source,
    update_norm,
)
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.ledger import read_ledger, recompute
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import arrays_to_record, record_to_arrays

SPEC = {"a": ((3,), "float32"), "b": ((2, 2), "float32")}


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def arrays(a: list[float], b: list[list[float]]) -> dict[str, np.ndarray]:
    return {"a": np.array(a, np.float32), "b": np.array(b, np.float32)}


def noisy_mean(
    updates: list[dict[str, np.ndarray]], spec: Any, *, clip: float, rng: Any, **kw: Any
) -> tuple[dict[str, np.ndarray], list[float]]:
    """One round of the server's mechanism: the updates into a ClippedSum, then released."""
    total = ClippedSum(spec, clip)
    for upd in updates:
        total.add(upd)
    return total.noisy_mean(rng=rng, **kw), total.norms


def test_clipping_bounds_the_joint_norm_and_keeps_small_updates() -> None:
    big = arrays([3.0, 0.0, 0.0], [[4.0, 0.0], [0.0, 0.0]])  # norm 5
    clipped, norm = clip_update(big, 1.0)
    assert norm == pytest.approx(5.0)
    assert update_norm(clipped) == pytest.approx(1.0)
    np.testing.assert_allclose(clipped["a"], [0.6, 0, 0])
    small = arrays([0.1, 0.0, 0.0], [[0.0, 0.0], [0.0, 0.0]])
    np.testing.assert_allclose(clip_update(small, 1.0)[0]["a"], small["a"], rtol=1e-6)
    zero = arrays([0.0] * 3, [[0.0, 0.0], [0.0, 0.0]])
    clipped, norm = clip_update(zero, 1.0)
    assert norm == 0.0 and all(np.all(v == 0) for v in clipped.values())


def test_noisy_mean_divides_by_expected_devices_not_by_the_count() -> None:
    ups = [arrays([1.0, 0, 0], [[0, 0], [0, 0]]), arrays([0.5, 0, 0], [[0, 0], [0, 0]])]
    mean, norms = noisy_mean(
        ups, SPEC, clip=10.0, noise_multiplier=0.0, expected_devices=10.0,
        rng=np.random.default_rng(0),
    )  # fmt: skip
    np.testing.assert_allclose(mean["a"], [0.15, 0, 0], rtol=1e-6)  # 1.5 / 10, not / 2
    assert norms == pytest.approx([1.0, 0.5])
    assert mean["a"].dtype == np.float32
    with pytest.raises(TypeError, match="expected"):
        ClippedSum(SPEC, 10.0).mean()  # never the realised count under user-level DP


def test_noise_has_standard_deviation_z_times_s_over_expected_devices() -> None:
    spec = {"w": ((200_000,), "float64")}
    mean, _ = noisy_mean(
        [], spec, clip=0.5, noise_multiplier=2.0, expected_devices=4.0,
        rng=np.random.default_rng(1),
    )  # fmt: skip
    # An empty round still releases noise of the right shape and scale: 2·0.5/4 = 0.25.
    assert mean["w"].std() == pytest.approx(0.25, rel=0.01)
    assert abs(mean["w"].mean()) < 0.005


def test_one_user_moves_the_noiseless_sum_by_at_most_the_clip() -> None:
    rng = np.random.default_rng(3)
    others = [arrays(list(rng.normal(size=3)), rng.normal(size=(2, 2)).tolist()) for _ in range(5)]
    outlier = arrays([1e6, -1e6, 0], [[1e6, 0], [0, 0]])
    kw: dict[str, Any] = {"clip": 0.7, "noise_multiplier": 0.0, "expected_devices": 1.0}
    with_u, _ = noisy_mean([*others, outlier], SPEC, rng=rng, **kw)
    without, _ = noisy_mean(others, SPEC, rng=rng, **kw)
    diff = {k: with_u[k].astype(np.float64) - without[k] for k in SPEC}
    assert update_norm(diff) <= 0.7 + 1e-5


def test_default_delta_and_noise_sources() -> None:
    # min(1e-5, 1/(10·N)): at N = 943, 1e-5 (N·δ ≈ 0.009, not 0.5 as N^-1.1 gave).
    assert default_user_delta(943) == 1e-5
    assert default_user_delta(10**6) == pytest.approx(1e-7)
    a = noise_source(7, role="x").rng.normal(size=4)
    b = noise_source(7, role="x").rng.normal(size=4)
    np.testing.assert_array_equal(a, b)
    assert "SEEDED" in noise_source(7, role="x").description
    s1, s2 = noise_source(None, role="x"), noise_source(None, role="x")
    assert "secure" in s1.description
    assert not np.array_equal(s1.rng.normal(size=4), s2.rng.normal(size=4))


def config(tmp_path: Path, **extra: Any) -> FederationConfig:
    values = {
        "embedding-dim": 4, "server-opt": "fedavg", "server-lr": 1.0, "out": str(tmp_path),
        "dp": "user", "user-noise": 1.5, "user-clip": 0.5, "sample-rate": 0.5,
        "rounds": 5, "noise-seed": 11, "user-delta": 1e-5,
    }  # fmt: skip
    values.update(extra)
    return FederationConfig.from_mapping(values)


def test_accountant_composes_over_rounds_like_dp_accounting(tmp_path: Path) -> None:
    up = UserPrivacy.from_config(config(tmp_path, **{"user-accountant": "rdp"}), n_devices=100)
    for r in range(1, 8):
        event = up.release(r)
    acc = rdp.RdpAccountant()
    ev = dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.5))
    acc.compose(ev, 7)
    assert event.epsilon == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    # ... and not what a fresh accountant for the last round alone would say.
    one = rdp.RdpAccountant()
    one.compose(ev, 1)
    assert event.epsilon > 1.5 * one.get_epsilon(1e-5)


def test_target_epsilon_is_met_for_the_planned_rounds(tmp_path: Path) -> None:
    cfg = config(tmp_path, **{"user-noise": None, "user-epsilon": 4.0, "rounds": 20})
    up = UserPrivacy.from_config(cfg, n_devices=500)
    acc = pld.PLDAccountant()
    ev = dp_accounting.PoissonSampledDpEvent(
        0.5, dp_accounting.GaussianDpEvent(up.noise_multiplier)
    )
    acc.compose(ev, 20)
    assert acc.get_epsilon(1e-5) == pytest.approx(4.0, rel=1e-3)


class ZeroOrNanGrid:
    """Node 1 sends a zero update, node 2 a NaN one, node 3 a huge one."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        out = []
        for msg in messages:
            params = record_to_arrays(msg.content.array_records["global"])
            node = msg.metadata.dst_node_id
            fill = {1: 0.0, 2: np.nan, 3: 1e3}[node]
            upd = {k: np.full_like(v, fill) for k, v in params.items()}
            metrics = MetricRecord({"num-examples": 3, "train-loss": 1.0, "train-seconds": 0.0})
            out.append(
                Message(
                    RecordDict({"update": arrays_to_record(upd), "metrics": metrics}), reply_to=msg
                )
            )
        return out


def make_server(tmp_path: Path, **extra: Any) -> Server:
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    return Server(ZeroOrNanGrid(), config(tmp_path, **extra), catalog, n_devices=3)  # type: ignore[arg-type]


def test_a_dp_round_is_robust_and_logged_in_the_ledger(tmp_path: Path) -> None:
    server = make_server(tmp_path, **{"user-noise": 1e-9, "user-accountant": "rdp"})
    before = {k: v.copy() for k, v in server.params.items()}
    result = server.train_round(1, [1, 2, 3], JsonlWriter(tmp_path / "m.jsonl"))
    assert result.rejected == 1 and result.aggregated == 2  # NaN never aggregated
    # Sum of clipped updates: zero plus one clipped to 0.5, over q·N = 1.5.
    delta = {k: server.params[k].astype(np.float64) - before[k] for k in before}
    assert update_norm(delta) == pytest.approx(0.5 / 1.5, rel=1e-4)
    (event,) = read_ledger(tmp_path / "ledger.jsonl")
    assert (event.layer, event.unit, event.round, event.steps) == ("user", "user", 1, 1)
    assert event.epsilon == result.user_epsilon and event.sample_rate == 0.5


def test_an_empty_round_still_releases_noise_and_is_accounted(tmp_path: Path) -> None:
    server = make_server(tmp_path)
    before = {k: v.copy() for k, v in server.params.items()}
    server.aggregate(1, RoundResult())
    assert any(not np.array_equal(before[k], server.params[k]) for k in before)
    assert len(read_ledger(tmp_path / "ledger.jsonl")) == 1


def test_the_user_budget_stops_training_before_it_is_exceeded(tmp_path: Path) -> None:
    one_round = UserPrivacy.from_config(config(tmp_path), n_devices=3)
    one_round.release(1)
    eps1 = one_round.epsilon
    one_round.release(2)
    eps2 = one_round.epsilon
    budget = (eps1 + eps2) / 2  # room for exactly one round
    server = make_server(tmp_path, **{"user-epsilon-budget": budget, "eval-every": 0})
    server.enroll = lambda nodes, log: list(nodes)  # type: ignore[method-assign]
    outcome = server.run()
    events = read_ledger(tmp_path / "ledger.jsonl")
    assert len(events) == 1 and events[0].epsilon <= budget
    assert outcome["rounds_completed"] == 1
    assert "user-level budget" in outcome["stopped_reason"]
    report = outcome["privacy"]
    assert report["user"]["epsilon"] == pytest.approx(eps1)
    assert recompute(events).worst_relative_error < 1e-9


def test_config_requires_exactly_one_noise_setting_per_dp_layer() -> None:
    with pytest.raises(ConfigError, match="exactly one of --user-noise"):
        FederationConfig.from_mapping({"dp": "user"})
    with pytest.raises(ConfigError, match="exactly one of --local-noise"):
        FederationConfig.from_mapping({"dp": "both", "user-noise": 1.0})
    with pytest.raises(ConfigError, match="--dp is 'none'"):
        FederationConfig.from_mapping({"user-noise": 1.0})
    with pytest.raises(ConfigError, match="user-accountant rdp"):
        FederationConfig.from_mapping({"dp": "user", "user-noise": 0.1})


def test_a_clipped_sum_refuses_weights() -> None:
    """Under user-level DP every device counts once: a weight would break the bound."""
    total = ClippedSum({"w": ((2,), "float64")}, clip=1.0)
    total.add({"w": np.array([3.0, 4.0])})
    with pytest.raises(ValueError, match="sensitivity bound"):
        total.add({"w": np.array([3.0, 4.0])}, weight=2.0)
    with pytest.raises(ConfigError, match="aggregation equal"):
        FederationConfig.from_mapping({"dp": "user", "user-noise": 1.0, "aggregation": "examples"})


def test_a_clipped_sum_clips_by_its_own_norm_not_a_given_one() -> None:
    """A norm passed in (the sanity check's, for the log) never loosens the clip."""
    total = ClippedSum({"w": ((2,), "float64")}, clip=1.0)
    total.add({"w": np.array([3.0, 4.0])}, norm=0.5)  # understated: the clip ignores it
    assert total.norms == [5.0]
    np.testing.assert_allclose(total.total["w"], [0.6, 0.8])
