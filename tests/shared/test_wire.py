"""The allow-list: what may leave a device, checked before sending and on arrival."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from pollinate.shared.wire import (
    MAX_UPDATE_NORM,
    REFUSAL_CODES,
    AllowListError,
    arrays_to_record,
    check_incoming,
    check_outgoing,
    eval_metric_keys,
    record_bytes,
    refusal_code,
    refusal_content,
    spec_of,
    train_metric_keys,
)

GLOBAL = {
    "item_factors.weight": np.zeros((5, 3), np.float32),
    "item_bias.weight": np.zeros((5, 1), np.float32),
}
SPEC = spec_of(GLOBAL)
METRICS: dict[str, Any] = {"num-examples": 4, "train-loss": 0.3, "train-seconds": 0.01}


def reply(arrays: dict[str, np.ndarray], metrics: dict[str, Any] | None = None) -> RecordDict:
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


# -- decoded payloads ------------------------------------------------------------------


def lying(payload: np.ndarray, declared: tuple[int, ...], dtype: str = "float32") -> Array:
    """An Array whose declared shape/dtype is not its payload's."""
    return Array(dtype=dtype, shape=declared, stype="numpy.ndarray", data=Array(payload).data)


def reply_with(name: str, arr: Array) -> RecordDict:
    record = arrays_to_record(GLOBAL)
    record[name] = arr
    return RecordDict({"update": record, "metrics": MetricRecord(METRICS)})


@pytest.mark.parametrize("check", [check_outgoing, check_incoming])
def test_a_payload_smaller_than_it_declares_is_refused(check: Any) -> None:
    """A (1, 3) payload declared (5, 3) would broadcast to five rows of influence."""
    small = lying(np.ones((1, 3), np.float32), (5, 3))
    with pytest.raises(AllowListError, match=r"payload is float32\(1, 3\)") as info:
        check(reply_with("item_factors.weight", small), kind="train", spec=SPEC)
    assert info.value.reason == "shape"
    wide = lying(np.ones((5, 1), np.float64), (5, 1))
    with pytest.raises(AllowListError, match="payload is float64") as info:
        check(reply_with("item_bias.weight", wide), kind="train", spec=SPEC)
    assert info.value.reason == "dtype"


@pytest.mark.parametrize(
    "data",
    [
        b"junk",
        b"",
        b"\x93NUMPY garbage",
    ],
)
def test_bytes_that_do_not_decode_are_a_rejection_not_a_crash(data: bytes) -> None:
    bad = Array(dtype="float32", shape=(5, 1), stype="numpy.ndarray", data=data)
    with pytest.raises(AllowListError, match="does not decode") as info:
        check_incoming(reply_with("item_bias.weight", bad), kind="train", spec=SPEC)
    assert info.value.reason == "decode"


def test_an_npz_payload_is_not_an_array() -> None:
    buf = io.BytesIO()
    np.savez(buf, x=np.zeros((5, 1), np.float32))
    bad = Array(dtype="float32", shape=(5, 1), stype="numpy.ndarray", data=buf.getvalue())
    with pytest.raises(AllowListError, match="decodes to a NpzFile"):
        check_incoming(reply_with("item_bias.weight", bad), kind="train", spec=SPEC)


def test_a_huge_update_norm_is_rejected_on_the_server() -> None:
    # float32 values near their maximum: finite, but the norm (in float64) is 3e38·√20.
    huge = dict(GLOBAL, **{"item_factors.weight": np.full((5, 3), 3e38, np.float32)})
    check_outgoing(reply(huge), kind="train", spec=SPEC)
    with pytest.raises(AllowListError, match="sanity bound") as info:
        check_incoming(reply(huge), kind="train", spec=SPEC)
    assert info.value.reason == "norm"
    # Just under the bound passes: √15 · 258000 ≈ 999,000.
    big = dict(GLOBAL, **{"item_factors.weight": np.full((5, 3), 258_000.0, np.float32)})
    got = check_incoming(reply(big), kind="train", spec=SPEC)
    assert MAX_UPDATE_NORM == 1e6
    # The norm the check computed travels with the reply (the run log's update norm).
    assert got.norm == pytest.approx(np.sqrt(15) * 258_000.0, rel=1e-6)


# -- exact metric key sets per DP mode ----------------------------------------------------


def test_the_key_sets_per_mode_are_the_documented_ones() -> None:
    plain = {"num-examples", "train-loss", "train-seconds"}
    assert train_metric_keys("none") == train_metric_keys("user") == plain
    assert train_metric_keys("local") == train_metric_keys("both") == {"local-epsilon"}
    assert eval_metric_keys("rating", "user") == {"se_sum", "ae_sum", "count"}
    acc = {f"{m}@{k}_sum" for m in ("hr", "recall", "ndcg", "mrr") for k in (10, 20)}
    assert eval_metric_keys("ranking", "none") == acc | {"count"}
    div = {"diversity@10_sum", "diversity@20_sum"}
    assert eval_metric_keys("ranking", "none", genres=True) == acc | div | {"count"}
    assert eval_metric_keys("rating", "local") == {"se_sum", "ae_sum", "count", "local-epsilon"}
    assert eval_metric_keys("ranking", "both") == {
        "count", "hr@10_sum", "ndcg@10_sum", "local-epsilon"
    }  # fmt: skip
    with pytest.raises(ValueError, match="dp must be"):
        train_metric_keys("off")


@pytest.mark.parametrize("dp", ["none", "user"])
def test_without_local_dp_a_train_reply_has_exactly_the_plain_keys(dp: str) -> None:
    check_incoming(reply(GLOBAL), kind="train", spec=SPEC, dp=dp)
    missing = {k: v for k, v in METRICS.items() if k != "num-examples"}
    with pytest.raises(AllowListError, match="not exactly") as info:
        check_incoming(reply(GLOBAL, missing), kind="train", spec=SPEC, dp=dp)
    assert info.value.reason == "metric-keys"
    with pytest.raises(AllowListError, match="not exactly"):
        check_incoming(reply(GLOBAL, {**METRICS, "local-epsilon": 1.0}), kind="train", spec=SPEC,
                       dp=dp)  # fmt: skip
    stopped = RecordDict({"metrics": MetricRecord({"dp-stopped": 1, "local-epsilon": 7.9})})
    with pytest.raises(AllowListError, match="only under interaction-level DP"):
        check_incoming(stopped, kind="train", spec=SPEC, dp=dp)


@pytest.mark.parametrize("dp", ["local", "both"])
def test_under_local_dp_a_train_reply_carries_its_epsilon_and_nothing_raw(dp: str) -> None:
    check_incoming(reply(GLOBAL, {"local-epsilon": 1.5}), kind="train", spec=SPEC, dp=dp)
    for raw in ("num-examples", "train-seconds", "train-loss"):
        with pytest.raises(AllowListError, match="not exactly"):
            check_incoming(
                reply(GLOBAL, {"local-epsilon": 1.5, raw: 3}), kind="train", spec=SPEC, dp=dp
            )
    stopped = RecordDict({"metrics": MetricRecord({"dp-stopped": 1, "local-epsilon": 7.9})})
    assert check_incoming(stopped, kind="train", spec=SPEC, dp=dp).update is None
    with pytest.raises(AllowListError, match="dp-stopped' must be 1"):
        check_incoming(
            RecordDict({"metrics": MetricRecord({"dp-stopped": 2, "local-epsilon": 7.9})}),
            kind="train", spec=SPEC, dp=dp,
        )  # fmt: skip


def evaluation(metrics: dict[str, Any]) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(metrics)})


def test_evaluation_replies_have_exact_keys_and_sane_values() -> None:
    rating = {"se_sum": 2.0, "ae_sum": 1.5, "count": 2}
    got = check_incoming(evaluation(rating), kind="evaluate", spec={}, dp="user", task="rating")
    assert got.metrics == rating and not got.noised
    check_incoming(evaluation({"count": 0.0}), kind="evaluate", spec={}, dp="none", task="rating")
    with pytest.raises(AllowListError, match="count 0"):
        check_incoming(evaluation({"count": 3}), kind="evaluate", spec={}, dp="none",
                       task="rating")  # fmt: skip
    with pytest.raises(AllowListError, match="not exactly"):
        check_incoming(evaluation({"se_sum": 2.0, "count": 2}), kind="evaluate", spec={},
                       dp="none", task="rating")  # fmt: skip
    with pytest.raises(AllowListError, match="negative"):
        check_incoming(evaluation({**rating, "se_sum": -1.0}), kind="evaluate", spec={},
                       dp="none", task="rating")  # fmt: skip
    ranking = dict.fromkeys(eval_metric_keys("ranking", "none"), 1.0) | {"count": 2}
    check_incoming(evaluation(ranking), kind="evaluate", spec={}, dp="none", task="ranking")
    with pytest.raises(AllowListError, match="exceeds the user count"):
        check_incoming(evaluation({**ranking, "hr@10_sum": 3.0}), kind="evaluate", spec={},
                       dp="none", task="ranking")  # fmt: skip
    # A noised release may be negative, and carries its ε; the plain keys are refused.
    noised: dict[str, Any] = {"count": 1.7, "hr@10_sum": -0.3, "ndcg@10_sum": 0.2,
                              "local-epsilon": 2.0}  # fmt: skip
    got = check_incoming(evaluation(noised), kind="evaluate", spec={}, dp="local", task="ranking")
    assert got.noised
    with pytest.raises(AllowListError, match="not exactly"):
        check_incoming(evaluation(ranking), kind="evaluate", spec={}, dp="local", task="ranking")
    with pytest.raises(AllowListError, match="not exactly"):
        check_incoming(evaluation({"count": 0}), kind="evaluate", spec={}, dp="both",
                       task="rating")  # fmt: skip


@pytest.mark.parametrize(
    ("metrics", "reason"),
    [
        ({**METRICS, "num-examples": -1}, "metric-value"),
        ({**METRICS, "num-examples": 2.5}, "metric-value"),
        ({**METRICS, "num-examples": 10**400}, "non-finite"),
        ({**METRICS, "train-loss": float("inf")}, "non-finite"),
        ({**METRICS, "train-seconds": -0.1}, "metric-value"),
        ({**METRICS, "train-loss": [1.0, 2.0]}, "metric-type"),
    ],
)
def test_numbers_out_of_range_are_rejected_with_a_reason(
    metrics: dict[str, Any], reason: str
) -> None:
    with pytest.raises(AllowListError) as info:
        check_incoming(reply(GLOBAL, metrics), kind="train", spec=SPEC, dp="none")
    assert info.value.reason == reason


def test_an_enrollment_must_carry_its_device_key() -> None:
    check_incoming(evaluation({"device-key": 2**62 + 1}), kind="enroll", spec={})
    for bad in ({}, {"device-key": 3, "count": 1}):
        with pytest.raises(AllowListError, match="not exactly"):
            check_incoming(evaluation(bad), kind="enroll", spec={})
    got = check_incoming(evaluation({"device-key": 2**62 + 1}), kind="enroll", spec={})
    assert got.metrics["device-key"] == 2**62 + 1  # an int, not rounded through a float


# -- refusals -------------------------------------------------------------------------------


def test_refusal_codes_are_distinct_and_cover_every_reason() -> None:
    assert set(REFUSAL_CODES) == {"policy", "budget", "evaluation", "no-data", "state"}
    assert len(set(REFUSAL_CODES.values())) == len(REFUSAL_CODES)
    assert all(isinstance(c, int) and not isinstance(c, bool) for c in REFUSAL_CODES.values())


@pytest.mark.parametrize("reason", sorted(REFUSAL_CODES))
@pytest.mark.parametrize("kind", ["train", "evaluate", "enroll"])
def test_a_refusal_is_one_code_and_nothing_else(reason: str, kind: str) -> None:
    content = refusal_content(reason)
    assert list(content.keys()) == ["metrics"]
    assert dict(content.metric_records["metrics"]) == {"refused": REFUSAL_CODES[reason]}
    assert refusal_code(content) == reason
    check_outgoing(content, kind=kind, spec=SPEC, dp="local", task="rating")
    got = check_incoming(content, kind=kind, spec=SPEC, dp="local", task="rating")
    assert (got.refused, got.update, got.metrics) == (reason, None, {})


def test_a_refusal_that_carries_anything_more_is_malformed() -> None:
    code = REFUSAL_CODES["policy"]
    more = evaluation({"refused": code, "train-loss": 0.4})
    unknown = evaluation({"refused": 99})
    with_update = RecordDict(
        {"update": arrays_to_record(GLOBAL), "metrics": MetricRecord({"refused": code})}
    )
    for content in (more, unknown, with_update):
        assert refusal_code(content) is None
        with pytest.raises(AllowListError) as info:
            check_incoming(content, kind="train", spec=SPEC, dp="none")
        assert info.value.reason in ("refusal", "records")
    with pytest.raises(ValueError, match="unknown refusal"):
        refusal_content("bored")


def test_a_bool_where_a_number_belongs_is_rejected() -> None:
    """Flower's MetricRecord refuses a bool when built; one that gets in anyway (another
    client library, a patched record) is rejected, not read as 1."""
    metrics = MetricRecord(METRICS)
    metrics._data["num-examples"] = True  # type: ignore[attr-defined]
    content = RecordDict({"update": arrays_to_record(GLOBAL), "metrics": metrics})
    with pytest.raises(AllowListError, match="scalar number, not bool") as info:
        check_incoming(content, kind="train", spec=SPEC, dp="none")
    assert info.value.reason == "metric-type"


def test_the_norm_bound_holds_for_float16_updates() -> None:
    """A float16 update's norm is summed in float64: its squares overflow float16 near 256."""
    spec16 = {"w": ((4,), "float16")}
    arrays = {"w": np.full(4, 200.0, np.float16)}  # norm 400: far under the bound
    got = check_incoming(reply(arrays), kind="train", spec=spec16)
    assert got.norm == pytest.approx(400.0)
