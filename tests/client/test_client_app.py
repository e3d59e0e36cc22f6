"""The ClientApp's real handlers, called directly: what a device actually sends."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.client import app as client_app
from pollinate.client.device_data import DeviceIndex
from pollinate.server.federation import DEVICE_KEYS, initial_global_state
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import TrainingDivergedError
from pollinate.shared.tasks import catalog_of, load_task
from pollinate.shared.wire import EVAL_METRIC_KEYS, TRAIN_METRIC_KEYS, arrays_to_record

CFG = FederationConfig.from_mapping(
    {"synthetic-users": 60, "synthetic-items": 40, "embedding-dim": 4, "out": "unused"}
)


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    # Messages need a run/task identity, which a SuperNode sets in a real run.
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def message(kind: str, round_: int, cfg: FederationConfig = CFG, **extra: Any) -> Message:
    flat = cfg.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    task = load_task(
        cfg.dataset, task=cfg.task, seed=cfg.seed, synthetic_users=60, synthetic_items=40
    )
    params = initial_global_state(cfg, catalog_of(task.data))
    content = RecordDict(
        {
            "global": arrays_to_record(params),
            "config": ConfigRecord(dict(config, round=round_, **extra)),
        }
    )
    msg_type = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
    return Message(content, 1, msg_type)


def context(partition: int) -> Context:
    return Context(
        run_id=1, node_id=partition + 1, node_config={"partition-id": partition},
        state=RecordDict(), run_config={},
    )  # fmt: skip


def test_a_train_reply_carries_only_the_global_update() -> None:
    ctx = context(3)
    reply = client_app.train(message("train", 1), ctx)
    content = reply.content
    assert set(content.keys()) == {"update", "metrics"}
    update = content.array_records["update"]
    assert set(update.keys()) == {"item_factors.weight", "item_bias.weight", "global_bias.weight"}
    assert set(content.metric_records["metrics"].keys()) <= TRAIN_METRIC_KEYS
    # The private parameters stay in the device's state, never in the message.
    saved = ctx.state.array_records["pollinate.local"]
    assert set(saved.keys()) == {"user_factors.weight", "user_bias.weight"}
    # No array in the reply is the user's item list or ratings.
    device = DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    ).device(3)
    raw = {tuple(device.data.items), tuple(device.data.ratings)}  # type: ignore[arg-type]
    for arr in update.values():
        flat = arr.numpy().ravel()
        assert tuple(flat[: len(device.data.items)]) not in raw


def test_without_dp_the_update_reveals_touched_items_which_dp_must_hide() -> None:
    # Documents the leak that the DP layer closes: without noise, the item rows that
    # changed are exactly the items the device trained on.
    reply = client_app.train(message("train", 1), context(5))
    rows = np.abs(reply.content.array_records["update"]["item_factors.weight"].numpy()).sum(1)
    device = DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    ).device(5)
    trained = set(device.data.items[device.split.train].tolist())
    assert set(np.flatnonzero(rows > 0).tolist()) == trained


def test_an_evaluation_reply_carries_sums_only() -> None:
    reply = client_app.evaluate(message("evaluate", 2, part="valid"), context(7))
    assert set(reply.content.keys()) == {"metrics"}
    assert not reply.content.array_records
    assert set(reply.content.metric_records["metrics"].keys()) <= EVAL_METRIC_KEYS


def test_the_client_app_scores_an_adapted_copy_and_keeps_no_state() -> None:
    plain = CFG
    adapted = FederationConfig.from_mapping(
        {**CFG.to_flat(), "adapt-epochs": 2, "adapt-lr-scale": 0.5}
    )
    ctx = context(4)
    client_app.train(message("train", 1, plain), ctx)
    saved = {k: v.numpy().copy() for k, v in ctx.state.array_records["pollinate.local"].items()}

    def sums(cfg: FederationConfig) -> dict[str, float]:
        reply = client_app.evaluate(message("evaluate", 1, cfg, part="valid"), ctx)
        assert set(reply.content.keys()) == {"metrics"} and not reply.content.array_records
        metrics = dict(reply.content.metric_records["metrics"])
        assert set(metrics) <= EVAL_METRIC_KEYS
        return metrics  # type: ignore[return-value]

    as_received = sums(plain)
    first, second = sums(adapted), sums(adapted)
    assert first["count"] == as_received["count"] == 1
    # The adapted copy scores differently, and the same way twice: nothing of it was kept.
    assert first["se_sum"] != pytest.approx(as_received["se_sum"], rel=1e-6)
    assert first == second
    assert sums(plain) == as_received
    after = ctx.state.array_records["pollinate.local"]
    assert set(after.keys()) == set(saved)
    for k, v in saved.items():
        np.testing.assert_array_equal(after[k].numpy(), v)


def test_ranking_evaluation_sums_use_the_reference_names() -> None:
    cfg = FederationConfig.from_mapping(
        {
            "synthetic-users": 60,
            "synthetic-items": 40,
            "embedding-dim": 4,
            "task": "ranking",
            "out": "x",
        }
    )
    reply = client_app.evaluate(message("evaluate", 1, cfg, part="test"), context(2))
    keys = set(reply.content.metric_records["metrics"].keys())
    assert {"hr@10_sum", "ndcg@10_sum", "recall@20_sum", "mrr@10_sum", "count"} <= keys
    assert keys <= EVAL_METRIC_KEYS


def test_private_state_persists_across_rounds_in_the_node_state() -> None:
    # Without the refit, which would recompute the private vector from the global tables.
    cfg = CFG.model_copy(update={"private_refit": False})
    ctx = context(4)
    client_app.train(message("train", 1, cfg), ctx)
    first = ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy().copy()
    client_app.train(message("train", 2, cfg), ctx)
    second = ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy()
    assert not np.array_equal(first, second)  # trained further from where it was


def test_the_refit_sets_the_private_vector_before_training_and_evaluating_keeps_none() -> None:
    def round_two(cfg: FederationConfig, scramble: bool) -> tuple[Context, np.ndarray]:
        ctx = context(6)
        client_app.train(message("train", 1, cfg), ctx)
        if scramble:
            saved = ctx.state.array_records["pollinate.local"]
            saved["user_factors.weight"] = Array(
                np.full_like(saved["user_factors.weight"].numpy(), 5.0)
            )
        client_app.train(message("train", 2, cfg), ctx)
        return ctx, ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy()

    # With the refit, round 2 does not depend on the private state round 1 left ...
    ctx, kept = round_two(CFG, scramble=False)
    _, scrambled = round_two(CFG, scramble=True)
    np.testing.assert_allclose(scrambled, kept, rtol=1e-5, atol=1e-6)
    # ... without it, round 2 starts from that state.
    no_refit = CFG.model_copy(update={"private_refit": False})
    _, plain = round_two(no_refit, scramble=False)
    _, from_scrambled = round_two(no_refit, scramble=True)
    assert np.abs(from_scrambled - plain).max() > 1.0
    # Evaluating refits too, but saves nothing.
    client_app.evaluate(message("evaluate", 3, part="valid"), ctx)
    after_eval = ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy()
    np.testing.assert_array_equal(after_eval, kept)


def test_a_diverged_round_raises_and_keeps_the_previous_private_state() -> None:
    ctx = context(5)
    client_app.train(message("train", 1), ctx)
    kept = ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy().copy()
    huge = {"lr-global": 1e30, "lr-local": 1e30, "local-epochs": 5}
    wild = FederationConfig.from_mapping(dict(CFG.to_flat(), **huge))
    with pytest.raises(TrainingDivergedError, match=r"non-finite values in .*lr-global"):
        client_app.train(message("train", 2, wild), ctx)
    after = ctx.state.array_records["pollinate.local"]["user_factors.weight"].numpy()
    np.testing.assert_array_equal(after, kept)


def test_enrollment_sends_the_device_key_only() -> None:
    reply = client_app.enroll(Message(RecordDict(), 1, "query.enroll"), context(9))
    assert dict(reply.content.metric_records["metrics"]) == {"device-key": 9}


DP_CFG = FederationConfig.from_mapping(
    {
        "synthetic-users": 60, "synthetic-items": 40, "embedding-dim": 4, "out": "unused",
        "dp": "local", "local-noise": 1.0, "local-clip": 0.5, "noise-seed": 3, "rounds": 5,
    }
)  # fmt: skip


def dp_message(round_: int, cfg: FederationConfig = DP_CFG) -> Message:
    return message("train", round_, cfg)


def dp_context(partition: int, tmp_path: Any) -> Context:
    """A simulated device whose own policy (node config) is the run's local DP."""
    from pollinate.client.policy import NODE_CONFIG_KEY, DevicePolicy

    policy = DevicePolicy(
        local_dp=True, noise_multiplier=1.0, clip=0.5, planned_rounds=5, evaluation="refuse",
        state_dir=str(tmp_path / "devices"), simulated=True, noise_seed=3,
        run_ledger=str(tmp_path / "ledger.jsonl"),
    )  # fmt: skip
    ctx = context(partition)
    ctx.node_config[NODE_CONFIG_KEY] = policy.to_json()
    return ctx


def private_vector(tmp_path: Any, partition: int) -> np.ndarray:
    from pollinate.client.local_state import DiskStateStore

    saved = DiskStateStore(tmp_path / "devices", f"device-{partition}").load(2**31)
    assert saved is not None
    return saved["user_factors.weight"]


def test_a_dp_reply_is_dense_and_carries_epsilon_not_the_loss(tmp_path: Any) -> None:
    device = DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    ).device(5)
    reply = client_app.train(dp_message(1), dp_context(5, tmp_path))
    metrics = reply.content.metric_records["metrics"]
    # No loss, no example count, no timing: the update and what it cost.
    assert set(metrics.keys()) == {"local-epsilon"} and metrics["local-epsilon"] > 0
    rows = reply.content.array_records["update"]["item_bias.weight"].numpy()[:, 0]
    untouched = np.setdiff1d(np.arange(40), device.data.items[device.split.train])
    assert len(untouched) > 0 and np.all(rows[untouched] != 0)


def _pld_replace_one(history: list[tuple[float, float, int]], delta: float) -> float:
    import dp_accounting
    from dp_accounting import pld

    acc = pld.PLDAccountant(neighboring_relation=dp_accounting.NeighboringRelation.REPLACE_ONE)
    for z, q, steps in history:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z)), steps)
    return float(acc.get_epsilon(delta))


def test_the_accountant_survives_a_crash_between_saving_and_sending(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pollinate.shared.privacy.ledger import read_ledger

    ctx = dp_context(7, tmp_path)
    client_app.train(dp_message(1), ctx)

    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("power cut after the write-ahead save")

    with monkeypatch.context() as m:
        m.setattr(client_app, "check_outgoing", crash)
        with pytest.raises(RuntimeError, match="power cut"):
            client_app.train(dp_message(2), ctx)
    # Round 2 is re-run (its reply never arrived), by a restarted node whose memory is
    # empty. The device remembers the lost release: its ε now composes three rounds.
    reply = client_app.train(dp_message(2), dp_context(7, tmp_path))
    eps = reply.content.metric_records["metrics"]["local-epsilon"]
    events = [e for e in read_ledger(tmp_path / "ledger.jsonl") if e.device == "7"]
    assert [e.round for e in events] == [1, 2, 2]
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    assert eps == pytest.approx(_pld_replace_one(history, events[-1].delta), rel=0.01)
    assert eps > events[1].epsilon


def test_every_config_key_the_device_reads_is_sent_to_it() -> None:
    # A key missing from DEVICE_KEYS silently falls back to a device-side default (this
    # once made `--loss` a no-op on Flower).
    import re
    from pathlib import Path

    source = Path(client_app.__file__).read_text()
    read = set(re.findall(r'config(?:\.get\()?\[?\(?"([a-z-]+)"', source))
    sent = set(DEVICE_KEYS) | {"round", "part", "partition-id"}
    assert read, "the pattern no longer finds the keys the device reads"
    assert read <= sent, f"read by the device but never sent: {sorted(read - sent)}"


def test_a_diverged_dp_round_is_charged_but_neither_kept_nor_sent(tmp_path: Any) -> None:
    from pollinate.shared.privacy.ledger import read_ledger

    ctx = dp_context(8, tmp_path)
    client_app.train(dp_message(1), ctx)
    kept = private_vector(tmp_path, 8).copy()
    huge = {"lr-global": 1e30, "lr-local": 1e30, "local-epochs": 5}
    wild = FederationConfig.from_mapping(dict(DP_CFG.to_flat(), **huge))
    with pytest.raises(TrainingDivergedError):
        client_app.train(dp_message(2, wild), ctx)
    # Whether a round diverges depends on the data, so the round still counts.
    assert [e.round for e in read_ledger(tmp_path / "ledger.jsonl") if e.device == "8"] == [1, 2]
    np.testing.assert_array_equal(private_vector(tmp_path, 8), kept)


def test_train_on_validation_adds_the_validation_row_and_leaves_the_test_unchanged() -> None:
    base = {"synthetic-users": 60, "synthetic-items": 40, "embedding-dim": 4, "out": "unused"}
    base |= {"task": "ranking", "eval-every": 0}
    plain = FederationConfig.from_mapping(base)
    tov = FederationConfig.from_mapping({**base, "train-on-validation": True})
    assert "train-on-validation" in DEVICE_KEYS
    examples = {}
    for cfg in (plain, tov):
        reply = client_app.train(message("train", 1, cfg), context(4))
        examples[cfg.train_on_validation] = reply.content.metric_records["metrics"]["num-examples"]
    # Leave-last-out ranking: one validation row per device, now a training example.
    assert examples[True] == examples[False] + 1
    # The test row and the items it is ranked against are those of a plain run: the same
    # untrained device gives the same test sums either way, and has no validation row left.
    sums = {}
    for cfg in (plain, tov):
        reply = client_app.evaluate(message("evaluate", 0, cfg, part="test"), context(4))
        sums[cfg.train_on_validation] = dict(reply.content.metric_records["metrics"])
    assert sums[True] == sums[False] and sums[True]["count"] == 1
    reply = client_app.evaluate(message("evaluate", 0, tov, part="valid"), context(4))
    assert reply.content.metric_records["metrics"]["count"] == 0


@pytest.mark.parametrize("model", ["mf", "interest"])
def test_a_new_device_starts_from_the_private_state_of_its_built_model(model: str) -> None:
    """``fresh_private_state`` (drawn without building a model where the model can) is
    the private state of the model ``fresh_model`` builds for that device."""
    cfg = CFG.model_copy(update={"model": model, "task": "ranking" if model == "interest"
                                 else "rating"})  # fmt: skip
    flat = cfg.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    index = DeviceIndex(load_task(cfg.dataset, task=cfg.task, seed=cfg.seed,
                                  synthetic_users=60, synthetic_items=40))  # fmt: skip
    for partition in (0, 7, 59):
        device = index.device(partition)
        drawn = client_app.fresh_private_state(config, device, partition)
        built = dict(client_app.fresh_model(config, device, partition).named_parameters())
        assert drawn.keys() == {k for k in built if k.startswith(("user_",))}
        for name, value in drawn.items():
            assert np.array_equal(value, built[name].detach().numpy()), (model, name)
