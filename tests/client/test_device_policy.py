"""The device decides its own protection: a request that would weaken its policy is
refused with a code and nothing else, and every evaluation it answers under local DP is a
charged release."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.client import app as client_app
from pollinate.client.local_state import DiskStateStore
from pollinate.client.policy import NODE_CONFIG_KEY, DevicePolicy, weakening
from pollinate.client.private_evaluation import evaluation_sensitivity, noised_sums
from pollinate.server.federation import DEVICE_KEYS, initial_global_state
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.ledger import read_ledger
from pollinate.shared.privacy.randomness import seeded_generator
from pollinate.shared.tasks import catalog_of, load_task
from pollinate.shared.wire import REFUSAL_CODES

USERS, ITEMS = 60, 40
CFG = FederationConfig.from_mapping(
    {
        "synthetic-users": USERS, "synthetic-items": ITEMS, "embedding-dim": 4, "out": "unused",
        "dp": "local", "local-noise": 1.0, "local-clip": 0.5, "rounds": 5,
    }
)  # fmt: skip


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def policy(tmp_path: Path, **changes: Any) -> DevicePolicy:
    base: dict[str, Any] = {
        "local_dp": True,
        "noise_multiplier": 1.0,
        "clip": 0.5,
        "planned_rounds": 5,
        "evaluation": "noised",
        "eval_noise": 2.0,
        "state_dir": str(tmp_path / "devices"),
        "simulated": True,
        "run_ledger": str(tmp_path / "ledger.jsonl"),
    }
    base.update(changes)
    return DevicePolicy(**base)


def context(partition: int, device_policy: DevicePolicy | None) -> Context:
    node_config: dict[str, Any] = {"partition-id": partition}
    if device_policy is not None:
        node_config[NODE_CONFIG_KEY] = device_policy.to_json()
    return Context(
        run_id=1, node_id=partition + 1, node_config=node_config, state=RecordDict(),
        run_config={},
    )  # fmt: skip


def message(kind: str, round_: int, cfg: FederationConfig = CFG, **extra: Any) -> Message:
    flat = cfg.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    for key in ("device-state-dir", "noise-seed", "run-ledger"):
        config.pop(key, None)
    config.update(round=round_, **extra)
    task = load_task(
        cfg.dataset, task=cfg.task, seed=cfg.seed, synthetic_users=USERS, synthetic_items=ITEMS
    )
    params = initial_global_state(cfg, catalog_of(task.data))
    content = RecordDict(
        {
            "global": client_app.arrays_to_record(params),
            "config": ConfigRecord({k: v for k, v in config.items() if v is not None}),
        }
    )
    msg_type = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
    return Message(content, 1, msg_type)


def assert_refused(reply: Message, reason: str) -> None:
    content = reply.content
    assert set(content.keys()) == {"metrics"}
    assert not content.array_records and not content.config_records
    assert dict(content.metric_records["metrics"]) == {"refused": REFUSAL_CODES[reason]}


WEAKER = {
    "no local DP": {"dp": "none", "local-noise": None},
    "user DP instead": {"dp": "user", "local-noise": None, "user-noise": 1.0},
    "lower noise": {"local-noise": 0.5},
    "larger clip": {"local-clip": 2.0},
    "a noise seed": {"noise-seed": 7},
    "another state folder": {"device-state-dir": "/tmp/elsewhere"},
    "a ledger path": {"run-ledger": "/tmp/elsewhere.jsonl"},
    "adaptation": {"adapt-epochs": 1},
    "the private refit": {"private-refit": True},
}


@pytest.mark.parametrize("what", sorted(WEAKER))
def test_a_weaker_request_is_refused_and_nothing_else_leaves(
    tmp_path: Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = context(3, policy(tmp_path))
    msg = message("train", 1)
    config = msg.content.config_records["config"]
    for key, value in WEAKER[what].items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    with caplog.at_level("WARNING", logger="pollinate.device"):
        reply = client_app.train(msg, ctx)
    assert_refused(reply, "policy")
    # The device says why, in its own log only.
    assert any("refused" in r.getMessage() for r in caplog.records)
    # Nothing was trained, charged or saved.
    assert not (tmp_path / "ledger.jsonl").exists()
    assert not (tmp_path / "devices").exists()


def test_the_same_request_within_the_policy_trains(tmp_path: Path) -> None:
    ctx = context(3, policy(tmp_path))
    stronger = message("train", 1, **{"local-noise": 2.0, "local-clip": 0.25})
    reply = client_app.train(stronger, ctx)
    assert set(reply.content.keys()) == {"update", "metrics"}
    assert set(reply.content.metric_records["metrics"].keys()) == {"local-epsilon"}
    # The device trains with its own policy's values, whatever the request said.
    (event,) = read_ledger(tmp_path / "ledger.jsonl")
    assert event.noise_multiplier == 1.0 and event.clip_norm == 0.5


def test_the_policy_comes_from_the_node_config_not_the_message() -> None:
    assert weakening(DevicePolicy(), {"dp": "none"}, "train") is None
    # A device with no local-DP policy cannot be talked into the server's DP parameters.
    assert weakening(DevicePolicy(), {"dp": "local", "local-noise": 0.01}, "train")
    with pytest.raises(ConfigError, match="only a simulated device"):
        DevicePolicy(noise_seed=3)
    with pytest.raises(ConfigError, match="unknown keys"):
        DevicePolicy.from_json('{"local_dp": false, "trust_server": true}')
    with pytest.raises(ConfigError, match="plain"):
        DevicePolicy(local_dp=True, noise_multiplier=1.0, evaluation="answer")


def test_local_dp_without_a_durable_store_is_refused(tmp_path: Path) -> None:
    reply = client_app.train(message("train", 1), context(3, policy(tmp_path, state_dir=None)))
    assert_refused(reply, "state")


def test_a_device_refuses_evaluation_when_its_policy_says_so(tmp_path: Path) -> None:
    ctx = context(4, policy(tmp_path, evaluation="refuse"))
    reply = client_app.evaluate(message("evaluate", 1, part="valid"), ctx)
    assert_refused(reply, "evaluation")
    assert not (tmp_path / "ledger.jsonl").exists()


def pld_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    acc = pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for z, q, steps in history:
        event = dp_accounting.GaussianDpEvent(z)
        if q < 1:
            event = dp_accounting.PoissonSampledDpEvent(q, event)
        acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


def test_a_noised_evaluation_is_a_charged_release(tmp_path: Path) -> None:
    ctx = context(4, policy(tmp_path))
    client_app.train(message("train", 1), ctx)
    reply = client_app.evaluate(message("evaluate", 1, part="valid"), ctx)
    metrics = dict(reply.content.metric_records["metrics"])
    assert set(metrics) == {"count", "se_sum", "ae_sum", "local-epsilon"}
    events = read_ledger(tmp_path / "ledger.jsonl")
    assert [(e.round, e.kind) for e in events] == [(1, "train"), (1, "evaluate")]
    train, ev = events
    assert (ev.noise_multiplier, ev.sample_rate, ev.steps) == (2.0, 1.0, 1)
    # Rating scale 1..5: replace-one sensitivity hypot(16, 4), charged in units of Δ/2.
    assert ev.clip_norm == pytest.approx(math.hypot(16, 4) / 2)
    history = [(train.noise_multiplier, train.sample_rate, train.steps), (2.0, 1.0, 1)]
    expected = pld_epsilon(history, ev.delta)
    assert metrics["local-epsilon"] == pytest.approx(expected, rel=0.01)
    assert metrics["local-epsilon"] > train.epsilon
    # The device's own ledger holds the same two releases: its accountant.
    store = DiskStateStore(tmp_path / "devices", "device-4")
    assert store.load_history() == history


def test_a_noised_evaluation_beyond_the_budget_is_refused(tmp_path: Path) -> None:
    ctx = context(4, policy(tmp_path, epsilon_budget=1e-3, eval_noise=1.0))
    reply = client_app.evaluate(message("evaluate", 1, part="valid"), ctx)
    assert_refused(reply, "budget")
    assert not (tmp_path / "ledger.jsonl").exists()


def test_noised_sums_have_the_stated_noise() -> None:
    sums = {"count": 3.0, "se_sum": 2.0, "ae_sum": 1.5}
    rng = seeded_generator(11)
    draws = np.array(
        [
            [
                v
                for k, v in noised_sums(sums, "rating", (1.0, 5.0), 3.0, rng)[0].items()
                if k != "count"
            ]
            for _ in range(4000)
        ]
    )
    sigma = 3.0 * math.hypot(16, 4) / 2
    np.testing.assert_allclose(draws.mean(0), [2.0, 1.5], atol=4 * sigma / math.sqrt(4000))
    np.testing.assert_allclose(draws.std(0), sigma, rtol=0.05)
    # Ranking: each held-out item moves each sum by at most 1, and a training interaction
    # can move all of them.
    assert evaluation_sensitivity("ranking", 2, None) == pytest.approx(2 * math.sqrt(2))
    released, unit = noised_sums({"count": 0.0}, "ranking", None, 3.0, rng)
    assert unit == 0 and released == {"count": 0.0, "hr@10_sum": 0.0, "ndcg@10_sum": 0.0}


def test_a_noise_seed_is_honoured_only_from_a_simulated_devices_node_config(
    tmp_path: Path,
) -> None:
    def update(seed: int | None, sub: str) -> np.ndarray:
        ctx = context(5, policy(tmp_path / sub, noise_seed=seed))
        reply = client_app.train(message("train", 1), ctx)
        return reply.content.array_records["update"]["item_bias.weight"].numpy()

    np.testing.assert_array_equal(update(9, "a"), update(9, "b"))
    assert not np.array_equal(update(None, "c"), update(None, "d"))


def test_a_restarted_device_continues_its_epsilon(tmp_path: Path) -> None:
    first = context(6, policy(tmp_path))
    client_app.train(message("train", 1), first)
    # A new process: a fresh context (empty node state), the same state directory.
    again = context(6, policy(tmp_path))
    reply = client_app.train(message("train", 2), again)
    events = [e for e in read_ledger(tmp_path / "ledger.jsonl") if e.device == "6"]
    assert [e.round for e in events] == [1, 2]
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    assert reply.content.metric_records["metrics"]["local-epsilon"] == pytest.approx(
        pld_epsilon(history, events[-1].delta), rel=0.01
    )
