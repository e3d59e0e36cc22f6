"""Property test of the server's reply handling over generated malformed replies.

Whatever a round's replies are, the round never raises; every malformed reply is rejected
(counted by reason and logged), every refusal is counted by its reason, and the valid
replies of the same round are aggregated into exactly the model that they alone give.
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pollinate.server.federation import Server
from pollinate.server.runlog import JsonlWriter
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import (
    REFUSAL_CODES,
    arrays_to_record,
    record_to_arrays,
    refusal_content,
    train_metric_keys,
)

Params = dict[str, np.ndarray]
Build = Callable[[Params], RecordDict]

#: Server settings per DP mode; under --dp user the noise is seeded, so that a second
#: server given only the valid replies draws the same noise.
MODES: dict[str, dict[str, Any]] = {
    "none": {},
    "user": {
        "dp": "user", "user-noise": 1.0, "user-clip": 0.5, "sample-rate": 1.0,
        "noise-seed": 5, "user-accountant": "rdp", "learn-global-mean": False,
    },
    "local": {"dp": "local", "local-noise": 1.0},
}  # fmt: skip


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class FakeGrid:
    def __init__(self, builds: dict[int, Build]) -> None:
        self.builds = builds

    def get_node_ids(self) -> list[int]:
        return list(self.builds)

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        out = []
        for msg in messages:
            params = record_to_arrays(msg.content.array_records["global"])
            content = self.builds[msg.metadata.dst_node_id](params)
            out.append(Message(content, reply_to=msg))
        return out


def valid_metrics(dp: str) -> dict[str, Any]:
    if dp == "local":
        return {"local-epsilon": 0.8}
    return {"num-examples": 12, "train-loss": 0.7, "train-seconds": 0.05}


def content(update: ArrayRecord | None, metrics: dict[str, Any] | None) -> RecordDict:
    records: dict[str, Any] = {}
    if update is not None:
        records["update"] = update
    if metrics is not None:
        records["metrics"] = MetricRecord(metrics)
    return RecordDict(records)


def refusal(reason: str) -> Build:
    def build(params: Params) -> RecordDict:
        return refusal_content(reason)

    return build


def fixed(update: bool, metrics: dict[str, Any]) -> Build:
    def build(params: Params) -> RecordDict:
        return content(arrays_to_record(params) if update else None, metrics)

    return build


def valid(dp: str, scale: float) -> Build:
    def build(params: Params) -> RecordDict:
        upd = {k: np.full_like(v, scale) for k, v in params.items()}
        return content(arrays_to_record(upd), valid_metrics(dp))

    return build


def with_array(params: Params, name: str, arr: Array) -> ArrayRecord:
    record = arrays_to_record({k: np.full_like(v, 0.5) for k, v in params.items()})
    record[name] = arr
    return record


@st.composite
def malformed(draw: st.DrawFn, dp: str) -> Build:
    """One malformed train reply: the kinds of damage a buggy or hostile device can do."""
    kind = draw(
        st.sampled_from(
            [
                "declared-shape", "payload-shape", "dtype", "missing-array", "extra-array",
                "missing-key", "extra-key", "extra-record", "non-finite-array",
                "non-finite-metric", "list-metric", "huge-norm", "garbage-bytes", "npz",
                "no-metrics", "empty", "bad-refusal", "stopped", "bad-number", "wrong-stype",
            ]
        )
    )  # fmt: skip
    metrics = valid_metrics(dp)
    other_mode = "local" if dp != "local" else "none"
    name = draw(st.sampled_from(["item_factors.weight", "item_bias.weight"]))
    position = draw(st.integers(0, 5))
    bad_value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    blob = draw(st.binary(max_size=64))

    def build(params: Params) -> RecordDict:
        base = params[name]
        if kind == "declared-shape":  # a (1, d) payload declared as the whole table
            small = Array(np.zeros((1, *base.shape[1:]), base.dtype))
            arr = Array(dtype=str(base.dtype), shape=base.shape, stype="numpy.ndarray",
                        data=small.data)  # fmt: skip
            return content(with_array(params, name, arr), metrics)
        if kind == "payload-shape":  # cannot broadcast, declared as it is
            return content(with_array(params, name, Array(np.zeros((3, 2), base.dtype))), metrics)
        if kind == "dtype":
            return content(with_array(params, name, Array(base.astype(np.float64))), metrics)
        if kind == "missing-array":
            upd = {k: np.zeros_like(v) for k, v in params.items() if k != name}
            return content(arrays_to_record(upd), metrics)
        if kind == "extra-array":
            return content(
                with_array(params, "user_factors.weight", Array(np.zeros((1, 4), np.float32))),
                metrics,
            )
        if kind == "missing-key":
            drop = sorted(metrics)[position % len(metrics)]
            kept = {k: v for k, v in metrics.items() if k != drop}
            return content(arrays_to_record(params), kept)
        if kind == "extra-key":
            other = ["rating-of-item-3", "dp-stopped", *sorted(train_metric_keys(other_mode))]
            return content(arrays_to_record(params), {**metrics, other[position % len(other)]: 1})
        if kind == "extra-record":
            update = arrays_to_record({k: np.zeros_like(v) for k, v in params.items()})
            record: Any = [
                ConfigRecord({"items": "1,2,3"}),
                ArrayRecord({"items": Array(np.arange(3))}),
                MetricRecord({"count": 1}),
            ][position % 3]
            return RecordDict({"update": update, "metrics": MetricRecord(metrics), "x": record})
        if kind == "non-finite-array":
            damaged = np.zeros_like(base)
            damaged.flat[position % damaged.size] = bad_value
            return content(with_array(params, name, Array(damaged)), metrics)
        if kind == "non-finite-metric":
            key = sorted(metrics)[position % len(metrics)]
            value: Any = float(bad_value) if key != "num-examples" else 10**400
            return content(arrays_to_record(params), {**metrics, key: value})
        if kind == "list-metric":
            key = sorted(metrics)[position % len(metrics)]
            return content(arrays_to_record(params), {**metrics, key: [1.0, 2.0]})
        if kind == "huge-norm":
            huge = np.full_like(base, 3e37 if position % 2 else 1e7)
            return content(with_array(params, name, Array(huge)), metrics)
        if kind == "garbage-bytes":
            arr = Array(dtype=str(base.dtype), shape=base.shape, stype="numpy.ndarray",
                        data=blob)  # fmt: skip
            return content(with_array(params, name, arr), metrics)
        if kind == "npz":
            buf = io.BytesIO()
            np.savez(buf, x=base)
            arr = Array(dtype=str(base.dtype), shape=base.shape, stype="numpy.ndarray",
                        data=buf.getvalue())  # fmt: skip
            return content(with_array(params, name, arr), metrics)
        if kind == "wrong-stype":
            arr = Array(dtype=str(base.dtype), shape=base.shape, stype="torch.Tensor",
                        data=Array(base).data)  # fmt: skip
            return content(with_array(params, name, arr), metrics)
        if kind == "no-metrics":
            return content(arrays_to_record(params), None)
        if kind == "empty":
            return RecordDict()
        if kind == "bad-refusal":
            code = [99, -1, 0][position % 3]
            more = {"refused": REFUSAL_CODES["policy"], "train-loss": 0.1}
            return content(None, {"refused": code} if position % 2 else more)
        if kind == "stopped":  # under local DP: stopped, yet an update; otherwise: no such key
            stop = {"local-epsilon": 9.0, "dp-stopped": 1}
            return content(arrays_to_record(params) if dp == "local" else None, stop)
        # "bad-number": a count that is negative or not an integer, or a negative ε/time
        if dp == "local":
            return content(arrays_to_record(params), {"local-epsilon": -1.0})
        bad: list[dict[str, Any]] = [
            {"num-examples": -3}, {"num-examples": 2.5}, {"train-seconds": -1.0}
        ]  # fmt: skip
        return content(arrays_to_record(params), {**metrics, **bad[position % 3]})

    build.__name__ = f"malformed[{kind}]"
    return build


@st.composite
def round_replies(draw: st.DrawFn, dp: str) -> list[tuple[str, Any]]:
    """A round's replies in node order: ("valid", scale), ("refusal", reason) or
    ("malformed", build)."""
    entry = st.one_of(
        st.tuples(st.just("valid"), st.floats(-2.0, 2.0, allow_nan=False, width=32)),
        st.tuples(st.just("refusal"), st.sampled_from(sorted(REFUSAL_CODES))),
        st.tuples(st.just("malformed"), malformed(dp)),
    )
    return draw(st.lists(entry, min_size=1, max_size=7))


def server_for(dp: str, builds: dict[int, Build], out: Path, n_devices: int) -> Server:
    cfg = FederationConfig.from_mapping(
        {"embedding-dim": 4, "server-opt": "fedavg", "server-lr": 1.0, "out": str(out),
         "progress": False} | MODES[dp]
    )  # fmt: skip
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    return Server(FakeGrid(builds), cfg, catalog, n_devices=n_devices)  # type: ignore[arg-type]


@pytest.mark.slow
@pytest.mark.parametrize("dp", sorted(MODES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_malformed_replies_never_stop_a_round_nor_change_the_model(dp: str, data: Any) -> None:
    replies = data.draw(round_replies(dp), label="replies")
    builds: dict[int, Build] = {}
    valid_builds: dict[int, Build] = {}
    refusals: dict[str, int] = {}
    for node, (what, arg) in enumerate(replies, start=1):
        if what == "valid":
            builds[node] = valid_builds[node] = valid(dp, arg)
        elif what == "refusal":
            builds[node] = refusal(arg)
            refusals[arg] = refusals.get(arg, 0) + 1
        else:
            builds[node] = arg
    malformed_nodes = [n for n, (what, _) in enumerate(replies, start=1) if what == "malformed"]
    with tempfile.TemporaryDirectory() as tmp:
        mixed = server_for(dp, builds, Path(tmp) / "mixed", len(builds))
        log = JsonlWriter(Path(tmp) / "mixed" / "messages.jsonl")
        result = mixed.train_round(1, sorted(builds), log)
        log.close()
        # The same N: under --dp user the divisor q·N and the seeded noise must match.
        reference = server_for(dp, valid_builds, Path(tmp) / "reference", len(builds))
        ref = reference.train_round(
            1, sorted(valid_builds), JsonlWriter(Path(tmp) / "reference" / "m.jsonl")
        )
        lines = (Path(tmp) / "mixed" / "messages.jsonl").read_text().splitlines()
        verdicts = [json.loads(x) for x in lines if '"verdict"' in x]
    assert result.aggregated == ref.aggregated == len(valid_builds)
    assert result.rejected == sum(result.rejected_reasons.values()) == len(malformed_nodes)
    assert result.refused == refusals
    rejected = {e["node"]: e for e in verdicts if e["verdict"] == "rejected"}
    assert sorted(rejected) == malformed_nodes
    assert all(e["reason"] and e["detail"] for e in rejected.values())
    for k, v in mixed.params.items():
        np.testing.assert_array_equal(v, reference.params[k])


#: Malformed evaluation replies of a rating run without local DP (each a RecordDict).
BAD_EVALUATIONS: list[dict[str, Any]] = [
    {"se_sum": 1.0, "ae_sum": 1.0},  # no count
    {"se_sum": 1.0, "ae_sum": 1.0, "count": 2, "hr@10_sum": 1.0},  # a key too many
    {"se_sum": 1.0, "ae_sum": 1.0, "count": 2, "local-epsilon": 1.0},  # another mode's key
    {"se_sum": float("nan"), "ae_sum": 1.0, "count": 2},
    {"se_sum": -4.0, "ae_sum": 1.0, "count": 2},  # an un-noised error sum below 0
    {"se_sum": [1.0], "ae_sum": 1.0, "count": 2},
    {"count": 3},  # "count" alone must be 0
    {"refused": 42},
]


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    replies=st.lists(
        st.one_of(
            st.tuples(
                st.just("valid"),
                st.tuples(st.floats(0, 50, width=32), st.floats(0, 50, width=32),
                          st.integers(0, 20)),
            ),
            st.tuples(st.just("refusal"), st.sampled_from(sorted(REFUSAL_CODES))),
            st.tuples(st.just("malformed"), st.integers(0, len(BAD_EVALUATIONS))),
        ),
        min_size=1,
        max_size=7,
    )
)  # fmt: skip
def test_malformed_evaluation_replies_are_rejected_and_the_rest_summed(
    replies: list[tuple[str, Any]],
) -> None:
    builds: dict[int, Build] = {}
    expected: list[dict[str, float]] = []
    for node, (what, arg) in enumerate(replies, start=1):
        if what == "valid":
            se, ae, count = arg
            sums = {"se_sum": se, "ae_sum": ae, "count": count} if count else {"count": 0}
            builds[node] = fixed(False, sums)
            expected.append({k: float(v) for k, v in sums.items()})
        elif what == "refusal":
            builds[node] = refusal(arg)
        elif arg == len(BAD_EVALUATIONS):  # an evaluation reply with arrays
            builds[node] = fixed(True, {"count": 0})
        else:
            builds[node] = fixed(False, BAD_EVALUATIONS[arg])
    with tempfile.TemporaryDirectory() as tmp:
        server = server_for("none", builds, Path(tmp), len(builds))
        ev = server.evaluation_round(1, sorted(builds), "test", JsonlWriter(Path(tmp) / "m.jsonl"))
    assert ev.parts == expected
    n_bad = sum(1 for what, _ in replies if what == "malformed")
    assert sum(ev.rejected_reasons.values()) == n_bad
    assert sum(ev.refused.values()) == sum(1 for what, _ in replies if what == "refusal")


class CrashingGrid(FakeGrid):
    """Node 2's ClientApp fails: Flower hands back an error reply in its place."""

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        from flwr.app import Error

        out = []
        for msg in messages:
            if msg.metadata.dst_node_id == 2:
                out.append(Message(Error(code=3, reason="ClientApp crashed"), reply_to=msg))
            else:
                out.extend(super().send_and_receive([msg]))
        return out


def test_a_failed_device_is_counted_and_named_with_flowers_reason(tmp_path: Path) -> None:
    builds = {1: valid("none", 0.1), 2: valid("none", 0.1), 3: valid("none", 0.1)}
    server = server_for("none", builds, tmp_path, 3)
    server.grid = CrashingGrid(builds)  # type: ignore[assignment]
    log = tmp_path / "messages.jsonl"
    result = server.train_round(1, [1, 2, 3], JsonlWriter(log))
    assert result.failed == 1 and result.aggregated == 2
    import json

    entries = [json.loads(line) for line in log.read_text().splitlines()]
    (failed,) = [e for e in entries if e.get("verdict") == "failed"]
    assert failed["node"] == 2 and failed["kind"] == "train"
    assert "ClientApp crashed" in failed["reason"] and "code 3" in failed["reason"]
