"""The allow-list: what may leave a device, checked before sending and on arrival."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from pollinate.shared.wire import (
    AllowListError,
    arrays_to_record,
    check_incoming,
    check_outgoing,
    record_bytes,
    spec_of,
)

GLOBAL = {
    "item_factors.weight": np.zeros((5, 3), np.float32),
    "item_bias.weight": np.zeros((5, 1), np.float32),
}
SPEC = spec_of(GLOBAL)
METRICS = {"num-examples": 4, "train-loss": 0.3, "train-seconds": 0.01}


def reply(arrays: dict[str, np.ndarray], metrics: dict[str, float] | None = None) -> RecordDict:
    return RecordDict(
        {"update": arrays_to_record(arrays), "metrics": MetricRecord(metrics or METRICS)}
    )


def test_a_global_update_passes() -> None:
    check_outgoing(reply(GLOBAL), kind="train", spec=SPEC)
    check_incoming(reply(GLOBAL), kind="train", spec=SPEC)


@pytest.mark.parametrize(
    "extra",
    [
        {"user_factors.weight": np.zeros((1, 3), np.float32)},  # a private parameter
        {"items": np.array([1, 2, 3])},  # a raw item list
        {"ratings": np.array([4.0, 5.0])},  # raw ratings
    ],
)
def test_private_or_raw_arrays_never_leave(extra: dict[str, np.ndarray]) -> None:
    with pytest.raises(AllowListError, match="not global parameters"):
        check_outgoing(reply({**GLOBAL, **extra}), kind="train", spec=SPEC)


def test_wrong_shape_or_dtype_is_refused() -> None:
    bad = dict(GLOBAL, **{"item_bias.weight": np.zeros((6, 1), np.float32)})
    with pytest.raises(AllowListError, match="allow-list says"):
        check_outgoing(reply(bad), kind="train", spec=SPEC)
    bad = dict(GLOBAL, **{"item_bias.weight": np.zeros((5, 1), np.float64)})
    with pytest.raises(AllowListError, match="allow-list says"):
        check_outgoing(reply(bad), kind="train", spec=SPEC)


def test_extra_records_and_metric_keys_are_refused() -> None:
    content = reply(GLOBAL)
    content["leak"] = ConfigRecord({"items": "1,2,3"})
    with pytest.raises(AllowListError):
        check_outgoing(content, kind="train", spec=SPEC)
    content = reply(GLOBAL)
    content["private"] = ArrayRecord({})
    with pytest.raises(AllowListError, match="records"):
        check_outgoing(content, kind="train", spec=SPEC)
    with pytest.raises(AllowListError, match="metric keys"):
        check_outgoing(reply(GLOBAL, {**METRICS, "rating-of-item-3": 5.0}), kind="train", spec=SPEC)


def test_evaluation_replies_carry_sums_only() -> None:
    ok = RecordDict({"metrics": MetricRecord({"se_sum": 1.0, "ae_sum": 1.0, "count": 2})})
    check_outgoing(ok, kind="evaluate", spec={})
    with pytest.raises(AllowListError):
        check_outgoing(
            RecordDict({"metrics": MetricRecord({"top10-items": [1, 2, 3]})}),
            kind="evaluate",
            spec={},
        )


def test_server_rejects_non_finite_updates() -> None:
    bad = dict(GLOBAL, **{"item_bias.weight": np.full((5, 1), np.nan, np.float32)})
    check_outgoing(reply(bad), kind="train", spec=SPEC)  # the shape is allowed ...
    with pytest.raises(AllowListError, match="non-finite"):
        check_incoming(reply(bad), kind="train", spec=SPEC)  # ... the values are not


def test_bytes_count_the_array_payload() -> None:
    assert record_bytes(reply(GLOBAL)) >= (15 + 5) * 4


def test_only_a_device_that_stopped_may_reply_without_an_update() -> None:
    stopped = RecordDict({"metrics": MetricRecord({"dp-stopped": 1, "local-epsilon": 7.9})})
    check_incoming(stopped, kind="train", spec=SPEC)
    silent = RecordDict({"metrics": MetricRecord({"local-epsilon": 7.9})})
    with pytest.raises(AllowListError, match="update"):
        check_incoming(silent, kind="train", spec=SPEC)
    sneaky = RecordDict(
        {
            "update": arrays_to_record(GLOBAL),
            "metrics": MetricRecord({"dp-stopped": 1}),
        }
    )
    with pytest.raises(AllowListError, match="stopped"):
        check_outgoing(sneaky, kind="train", spec=SPEC)
