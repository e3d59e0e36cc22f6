"""A server round against a fake Grid: what gets aggregated, and what never does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Error, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.server.federation import FederationError, Server
from pollinate.server.runlog import JsonlWriter
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import arrays_to_record, record_to_arrays

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
        sums = MetricRecord({"n": 1.0, "sse": 0.0, "sae": 0.0})
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
