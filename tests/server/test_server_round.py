"""A server round against a fake Grid: what gets aggregated, and what never does."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ConfigRecord, Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.server.evaluation import finalize
from pollinate.server.federation import FederationError, Server
from pollinate.server.runlog import JsonlWriter
from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.ledger import LedgerWriter
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import (
    arrays_to_record,
    record_to_arrays,
    refusal_content,
)

Reply = Callable[[Message, dict[str, np.ndarray]], Message]


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class FakeGrid:
    """Answers each message with the reply that ``behaviour[node]`` builds."""

    def __init__(self, behaviour: dict[int, Reply]) -> None:
        self.behaviour = behaviour

    def get_node_ids(self) -> list[int]:
        return list(self.behaviour)

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        out = []
        for msg in messages:
            params = record_to_arrays(msg.content.array_records["global"])
            out.append(self.behaviour[msg.metadata.dst_node_id](msg, params))
        return out


def update(scale: float, bad: str | None = None, examples: int = 10) -> Reply:
    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        upd = {k: np.full_like(v, scale) for k, v in params.items()}
        if bad == "nan":
            upd["item_bias.weight"][0, 0] = np.nan
        if bad == "shape":
            upd["item_bias.weight"] = np.zeros((3, 1), np.float32)
        if bad == "private":
            upd["user_factors.weight"] = np.zeros((1, 4), np.float32)
        metrics = MetricRecord({"num-examples": examples, "train-loss": 1.0, "train-seconds": 0.1})
        content = RecordDict({"update": arrays_to_record(upd), "metrics": metrics})
        return Message(content, reply_to=msg)

    return build


def failing(msg: Message, params: dict[str, np.ndarray]) -> Message:
    return Message(Error(code=1, reason="device crashed"), reply_to=msg)


def make_server(tmp_path: Path, grid: FakeGrid, **extra: object) -> Server:
    cfg = FederationConfig.from_mapping(
        {"embedding-dim": 4, "server-opt": "fedavg", "server-lr": 1.0, "out": str(tmp_path)} | extra
    )
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    return Server(grid, cfg, catalog, n_devices=len(grid.behaviour))  # type: ignore[arg-type]


def test_only_valid_updates_are_aggregated_with_equal_weights(tmp_path: Path) -> None:
    grid = FakeGrid(
        {
            1: update(0.1),
            2: update(0.3),
            3: update(5.0, bad="nan"),
            4: update(5.0, bad="shape"),
            5: update(5.0, bad="private"),
            6: failing,
        }
    )
    server = make_server(tmp_path, grid)
    before = {k: v.copy() for k, v in server.params.items()}
    log = JsonlWriter(tmp_path / "messages.jsonl")
    result = server.train_round(1, [1, 2, 3, 4, 5, 6], log)
    assert (result.aggregated, result.rejected, result.failed) == (2, 3, 1)
    for k, v in server.params.items():
        np.testing.assert_allclose(v, before[k] + 0.2, rtol=1e-6)  # mean of 0.1 and 0.3
    # The run log's update norms are those of the two accepted updates, as received.
    size = sum(v.size for v in before.values())
    np.testing.assert_allclose(result.update_norms, [0.1 * np.sqrt(size), 0.3 * np.sqrt(size)])


def test_example_weighting_weights_each_update_by_its_examples(tmp_path: Path) -> None:
    """``--aggregation examples``: (0.1·10 + 0.3·30) / 40 = 0.25; an update that claims
    no examples has nothing to weight by and is rejected."""
    grid = FakeGrid(
        {1: update(0.1, examples=10), 2: update(0.3, examples=30), 3: update(9.0, examples=0)}
    )
    server = make_server(tmp_path, grid, aggregation="examples")
    before = {k: v.copy() for k, v in server.params.items()}
    result = server.train_round(1, [1, 2, 3], JsonlWriter(tmp_path / "m.jsonl"))
    assert (result.aggregated, result.rejected, result.examples) == (2, 1, 40)
    for k, v in server.params.items():
        np.testing.assert_allclose(v, before[k] + 0.25, rtol=1e-6)


def test_a_round_where_every_reply_is_bad_leaves_the_model_unchanged(tmp_path: Path) -> None:
    server = make_server(tmp_path, FakeGrid({1: update(1.0, bad="nan"), 2: failing}))
    before = {k: v.copy() for k, v in server.params.items()}
    result = server.train_round(1, [1, 2], JsonlWriter(tmp_path / "m.jsonl"))
    assert result.aggregated == 0 and result.rejected == 1 and result.failed == 1
    for k, v in server.params.items():
        np.testing.assert_array_equal(v, before[k])


def test_enrollment_orders_nodes_by_device_key(tmp_path: Path) -> None:
    def key(k: int) -> Reply:
        def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
            return Message(RecordDict({"metrics": MetricRecord({"device-key": k})}), reply_to=msg)

        return build

    class EnrollGrid(FakeGrid):
        def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
            return [self.behaviour[m.metadata.dst_node_id](m, {}) for m in messages]

    server = make_server(tmp_path, EnrollGrid({900: key(2), 17: key(0), 400: key(1)}))
    assert server.enroll([900, 17, 400], JsonlWriter(tmp_path / "m.jsonl")) == [17, 400, 900]


def test_with_an_iterate_average_devices_train_on_the_live_model_and_evaluate_the_average(
    tmp_path: Path,
) -> None:
    """FedAvg at rate 1 with updates 0.1 then 0.3: the live iterate is x0 + 0.4, and the
    debiased average with β = 0.5 is (0.25·(x0 + 0.1) + 0.5·(x0 + 0.4)) / 0.75 = x0 + 0.3."""
    seen: dict[str, list[dict[str, np.ndarray]]] = {"train": [], "evaluate": []}
    step = iter([0.1, 0.3, 0.0])

    def device(msg: Message, params: dict[str, np.ndarray]) -> Message:
        kind = msg.metadata.message_type.split(".")[0]
        seen[kind].append(params)
        if kind == "train":
            return update(next(step))(msg, params)
        sums = MetricRecord({"se_sum": 0.0, "ae_sum": 0.0, "count": 1})
        return Message(RecordDict({"metrics": sums}), reply_to=msg)

    server = make_server(tmp_path, FakeGrid({1: device}), **{"server-ema": 0.5})
    x0 = {k: v.copy() for k, v in server.params.items()}
    log = JsonlWriter(tmp_path / "m.jsonl")
    server.train_round(1, [1], log)
    server.train_round(2, [1], log)
    server.evaluation_sums(3, [1], "valid", log)
    server.train_round(3, [1], log)
    for k, v in x0.items():
        np.testing.assert_allclose(seen["train"][1][k], v + 0.1, rtol=1e-6)
        np.testing.assert_allclose(seen["evaluate"][0][k], v + 0.3, rtol=1e-6)
        np.testing.assert_allclose(seen["train"][2][k], v + 0.4, rtol=1e-6)
    # The average is checkpointed with the live iterate, and a resume restores both.
    server.checkpoint(3)
    again = make_server(tmp_path, FakeGrid({1: device}), **{"server-ema": 0.5})
    again.resume()
    for k in x0:
        np.testing.assert_array_equal(again.released()[k], server.released()[k])
        np.testing.assert_array_equal(again.params[k], server.params[k])
    plain = make_server(tmp_path, FakeGrid({1: device}))
    with pytest.raises(FederationError, match="server-ema"):
        plain.resume()


def lying_update(scale: float) -> Reply:
    """One row of item factors declared as the whole table: broadcast by an unchecked sum,
    it would give the device one update's worth of influence on every item."""

    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        record = arrays_to_record({k: np.full_like(v, scale) for k, v in params.items()})
        table = params["item_factors.weight"]
        row = np.full((1, table.shape[1]), scale, table.dtype)
        record["item_factors.weight"] = Array(
            dtype=str(table.dtype), shape=table.shape, stype="numpy.ndarray", data=Array(row).data
        )
        metrics = MetricRecord({"num-examples": 10, "train-loss": 1.0, "train-seconds": 0.1})
        return Message(RecordDict({"update": record, "metrics": metrics}), reply_to=msg)

    return build


def test_a_payload_smaller_than_its_declared_shape_is_rejected(tmp_path: Path) -> None:
    server = make_server(tmp_path, FakeGrid({1: update(0.1), 2: lying_update(5.0)}))
    before = {k: v.copy() for k, v in server.params.items()}
    result = server.train_round(1, [1, 2], JsonlWriter(tmp_path / "m.jsonl"))
    assert (result.aggregated, result.rejected) == (1, 1)
    assert result.rejected_reasons == {"shape": 1}
    for k, v in server.params.items():
        np.testing.assert_allclose(v, before[k] + 0.1, rtol=1e-6)  # device 1 alone


def refusing(reason: str) -> Reply:
    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        return Message(refusal_content(reason), reply_to=msg)

    return build


def custom(metrics: dict[str, Any], **records: Any) -> Reply:
    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        upd = {k: np.full_like(v, 0.7) for k, v in params.items()}
        content = RecordDict({"update": arrays_to_record(upd), "metrics": MetricRecord(metrics)})
        for name, record in records.items():
            content[name] = record
        return Message(content, reply_to=msg)

    return build


def test_malformed_replies_and_refusals_are_counted_by_reason_and_logged(tmp_path: Path) -> None:
    plain = {"num-examples": 10, "train-loss": 1.0, "train-seconds": 0.1}
    grid = FakeGrid(
        {
            1: update(0.3),
            2: update(5.0, bad="nan"),
            3: refusing("budget"),
            4: refusing("policy"),
            5: refusing("budget"),
            6: custom({"train-loss": 1.0, "train-seconds": 0.1}),  # no num-examples
            7: custom(plain, leak=ConfigRecord({"items": "1,2"})),  # an extra record
            8: custom({**plain, "local-epsilon": 0.5}),  # a key of another DP mode
            9: failing,
        }
    )
    server = make_server(tmp_path, grid)
    before = {k: v.copy() for k, v in server.params.items()}
    log = JsonlWriter(tmp_path / "messages.jsonl")
    result = server.train_round(1, list(range(1, 10)), log)
    log.close()
    assert result.aggregated == 1 and result.failed == 1
    assert result.rejected_reasons == {"non-finite": 1, "metric-keys": 2, "records": 1}
    assert result.rejected == 4
    assert result.refused == {"budget": 2, "policy": 1}
    for k, v in server.params.items():
        np.testing.assert_allclose(v, before[k] + 0.3, rtol=1e-6)
    lines = [json.loads(x) for x in (tmp_path / "messages.jsonl").read_text().splitlines()]
    verdicts = {e["node"]: e for e in lines if e["direction"] == "verdict"}
    assert sorted(verdicts) == [2, 3, 4, 5, 6, 7, 8, 9]
    assert verdicts[3]["verdict"] == "refused" and verdicts[3]["reason"] == "budget"
    assert verdicts[9]["verdict"] == "failed" and "device crashed" in verdicts[9]["reason"]
    assert verdicts[6]["verdict"] == "rejected" and "num-examples" in verdicts[6]["detail"]


def evaluating(metrics: dict[str, Any] | None, reason: str | None = None) -> Reply:
    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        if reason is not None:
            return Message(refusal_content(reason), reply_to=msg)
        return Message(RecordDict({"metrics": MetricRecord(metrics or {})}), reply_to=msg)

    return build


def test_an_evaluation_every_device_refused_is_empty_not_a_crash(tmp_path: Path) -> None:
    grid = FakeGrid({1: evaluating(None, "evaluation"), 2: evaluating(None, "evaluation")})
    server = make_server(tmp_path, grid)
    log = JsonlWriter(tmp_path / "m.jsonl")
    ev = server.evaluation_round(1, [1, 2], "valid", log)
    assert ev.parts == [] and ev.refused == {"evaluation": 2} and ev.rejected_reasons == {}
    assert server.evaluate(2, [1, 2], "valid", log) == {}


def test_evaluation_replies_are_checked_and_counted(tmp_path: Path) -> None:
    grid = FakeGrid(
        {
            1: evaluating({"se_sum": 4.0, "ae_sum": 3.0, "count": 4}),
            2: evaluating({"count": 0.0}),  # no held-out rows
            3: evaluating({"se_sum": 1.0, "ae_sum": 1.0, "count": 1, "hr@10_sum": 1.0}),
            4: evaluating({"se_sum": -1.0, "ae_sum": 1.0, "count": 1}),
            5: evaluating(None, "no-data"),
        }
    )
    server = make_server(tmp_path, grid)
    ev = server.evaluation_round(1, [1, 2, 3, 4, 5], "test", JsonlWriter(tmp_path / "m.jsonl"))
    assert ev.parts == [{"se_sum": 4.0, "ae_sum": 3.0, "count": 4.0}, {"count": 0.0}]
    assert ev.rejected_reasons == {"metric-keys": 1, "metric-value": 1}
    assert ev.refused == {"no-data": 1}
    assert server.evaluate(2, [1, 2], "test", JsonlWriter(tmp_path / "n.jsonl")) == {
        "rmse": 1.0,
        "mae": 0.75,
    }


def test_noised_local_dp_evaluations_give_the_metrics_their_sums_allow(tmp_path: Path) -> None:
    """Under --dp local a ranking reply carries count, hr@10 and ndcg@10 sums (noised) and
    its ε: the server finalizes those two metrics over the summed count, nothing more."""
    noised = [
        {"count": 2.5, "hr@10_sum": 0.5, "ndcg@10_sum": 0.25, "local-epsilon": 1.0},
        {"count": 1.5, "hr@10_sum": 1.1, "ndcg@10_sum": -0.05, "local-epsilon": 2.0},
    ]
    grid = FakeGrid({1: evaluating(noised[0]), 2: evaluating(noised[1])})
    server = make_server(
        tmp_path, grid, dp="local", task="ranking", **{"local-noise": 1.0, "eval-every": 0}
    )
    ev = server.evaluation_round(1, [1, 2], "test", JsonlWriter(tmp_path / "m.jsonl"))
    assert ev.noised == [True, True] and all("local-epsilon" not in p for p in ev.parts)
    got = server.evaluate(1, [1, 2], "test", JsonlWriter(tmp_path / "n.jsonl"))
    assert got == pytest.approx({"hr@10": 1.6 / 4.0, "ndcg@10": 0.2 / 4.0})
    # Rating: RMSE and MAE of the summed (noised) sums; a negative sum is taken as 0.
    assert finalize("rating", {"se_sum": 8.0, "ae_sum": -1.0, "count": 2.0}) == {
        "rmse": 2.0,
        "mae": 0.0,
    }
    assert finalize("rating", {"count": -0.3, "se_sum": 1.0, "ae_sum": 1.0}) == {}


def test_an_enrollment_without_a_device_key_is_a_clear_error(tmp_path: Path) -> None:
    def build(msg: Message, params: dict[str, np.ndarray]) -> Message:
        return Message(RecordDict({"metrics": MetricRecord({})}), reply_to=msg)

    class EnrollGrid(FakeGrid):
        def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
            return [self.behaviour[m.metadata.dst_node_id](m, {}) for m in messages]

    server = make_server(tmp_path, EnrollGrid({3: build}))
    with pytest.raises(FederationError, match=r"did not enroll \(malformed replies by reason"):
        server.enroll([3], JsonlWriter(tmp_path / "m.jsonl"))


@pytest.mark.parametrize("fault", ["append raises", "ledger is a directory"])
def test_a_failed_ledger_write_leaves_the_model_and_optimizer_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fault: str
) -> None:
    """The ledger line of a user-level DP round comes before the new model is used."""
    server = make_server(
        tmp_path,
        FakeGrid({1: update(0.1), 2: update(0.2)}),
        dp="user",
        **{"server-opt": "fedadam", "server-lr": 0.1, "user-noise": 1.0, "user-clip": 1.0,
           "sample-rate": 1.0, "noise-seed": 3, "learn-global-mean": False},
    )  # fmt: skip
    log = JsonlWriter(tmp_path / "m.jsonl")
    server.train_round(1, [1, 2], log)  # a first round, so the optimizer has moments
    params = {k: v.copy() for k, v in server.params.items()}
    state = json.dumps(server.optimizer.state_dict(), default=lambda a: np.asarray(a).tolist())
    if fault == "append raises":

        def append(self: LedgerWriter, event: object) -> None:
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(LedgerWriter, "append", append)
    else:
        server.ledger_path.unlink()
        server.ledger_path.mkdir()
    with pytest.raises(FederationError, match="could not append the user-level ledger event"):
        server.train_round(2, [1, 2], log)
    for k, v in server.params.items():
        np.testing.assert_array_equal(v, params[k])
    after = json.dumps(server.optimizer.state_dict(), default=lambda a: np.asarray(a).tolist())
    assert after == state
