"""What may cross the wire between a device and the server, checked in code.

A device's reply carries exactly two records:

* ``"update"``: an :class:`~flwr.app.ArrayRecord` whose arrays are the update to the
  **global** parameters, each with exactly the name, shape and dtype that the server
  sent (the :data:`ParamSpec`);
* ``"metrics"``: a :class:`~flwr.app.MetricRecord` whose keys are a fixed set per
  message kind (:data:`TRAIN_METRIC_KEYS`, :data:`EVAL_METRIC_KEYS`).

Anything else (a local parameter, a raw item list, a rating, a ConfigRecord, an extra
record) makes :func:`check_outgoing` raise :class:`AllowListError` before sending.
The server applies :func:`check_incoming` to every reply, which in addition rejects
non-finite values.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from pollinate.shared.errors import PollinateError

#: name -> (shape, dtype string) of every global parameter.
ParamSpec = dict[str, tuple[tuple[int, ...], str]]

UPDATE_RECORD = "update"
METRICS_RECORD = "metrics"
GLOBAL_RECORD = "global"
CONFIG_RECORD = "config"

#: Metric keys a device may send after training. Under interaction-level DP a device
#: sends no ``train-loss`` (it is computed on raw data without noise); it sends its
#: cumulative ``local-epsilon`` and, once its budget is spent, ``dp-stopped`` = 1 with no
#: update at all.
TRAIN_METRIC_KEYS = frozenset(
    {"num-examples", "train-loss", "train-seconds", "local-epsilon", "dp-stopped"}
)

#: The only metric of an enrollment reply: a stable pseudonymous key of the device,
#: so that seeded sampling and resumed runs pick the same devices whatever node ids
#: Flower assigns (its partition-id in a simulation, a random persisted key on a phone).
ENROLL_METRIC_KEYS = frozenset({"device-key"})

#: Rating-task evaluation sums.
RATING_EVAL_KEYS = frozenset({"se_sum", "ae_sum", "count"})


def ranking_eval_keys(ks: Iterable[int]) -> frozenset[str]:
    """Ranking-task evaluation sums for cut-offs ``ks`` (no coverage: see metrics)."""
    keys = {"count"}
    for k in ks:
        for m in ("hr", "ndcg", "recall", "mrr", "novelty", "diversity"):
            keys.add(f"{m}@{k}_sum")
    return frozenset(keys)


#: Evaluation sums a device may send, for the cut-offs Pollinate reports.
EVAL_METRIC_KEYS = RATING_EVAL_KEYS | ranking_eval_keys((10, 20))


class AllowListError(PollinateError):
    """A message would carry something that is not on the allow-list.

    This is a privacy guard: never catch it to send the message anyway.
    """


def spec_of(params: Mapping[str, np.ndarray]) -> ParamSpec:
    """The spec (name -> shape, dtype) of a set of arrays."""
    return {n: (tuple(int(d) for d in a.shape), str(a.dtype)) for n, a in params.items()}


def arrays_to_record(params: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Pack numpy arrays into an ArrayRecord, keeping names and order."""
    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in params.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ArrayRecord into numpy arrays by name."""
    return {n: arr.numpy() for n, arr in record.items()}


def _check_arrays(record: ArrayRecord, spec: ParamSpec, who: str) -> None:
    names = set(record.keys())
    extra = sorted(names - set(spec))
    if extra:
        raise AllowListError(
            f"{who}: arrays {extra} are not global parameters; only {sorted(spec)} may leave"
        )
    missing = sorted(set(spec) - names)
    if missing:
        raise AllowListError(f"{who}: update lacks global parameters {missing}")
    for name, arr in record.items():
        shape, dtype = spec[name]
        if tuple(arr.shape) != shape or arr.dtype != dtype:
            raise AllowListError(
                f"{who}: array {name!r} is {arr.dtype}{tuple(arr.shape)}, "
                f"the allow-list says {dtype}{shape}"
            )


def _check_metrics(record: MetricRecord, allowed: frozenset[str], who: str) -> None:
    extra = sorted(set(record.keys()) - allowed)
    if extra:
        raise AllowListError(f"{who}: metric keys {extra} are not on the allow-list")
    for key, value in record.items():
        if not isinstance(value, int | float):
            raise AllowListError(f"{who}: metric {key!r} must be a scalar, not a list")


def check_outgoing(
    content: RecordDict,
    *,
    kind: str,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None = None,
) -> None:
    """Raise :class:`AllowListError` unless ``content`` is on the allow-list.

    ``kind`` is ``"train"`` (an update plus training metrics), ``"evaluate"``
    (evaluation sums only, no arrays) or ``"enroll"`` (the device key only).
    """
    who = f"outgoing {kind} reply"
    if kind == "train":
        allowed_records = {UPDATE_RECORD, METRICS_RECORD}
        keys = TRAIN_METRIC_KEYS if metric_keys is None else metric_keys
    elif kind in ("evaluate", "enroll"):
        allowed_records = {METRICS_RECORD}
        default = EVAL_METRIC_KEYS if kind == "evaluate" else ENROLL_METRIC_KEYS
        keys = default if metric_keys is None else metric_keys
    else:
        raise ValueError(f"kind must be 'train', 'evaluate' or 'enroll', got {kind!r}")
    extra = sorted(set(content.keys()) - allowed_records)
    if extra:
        raise AllowListError(f"{who}: records {extra} may not leave a device")
    if content.config_records:
        raise AllowListError(f"{who}: config records may not leave a device")
    if kind == "train":
        stopped = (
            METRICS_RECORD in content.metric_records
            and content.metric_records[METRICS_RECORD].get("dp-stopped") == 1
        )
        if stopped:
            if content.array_records:
                raise AllowListError(f"{who}: a device that stopped (dp-stopped) sends no arrays")
        elif UPDATE_RECORD not in content.array_records:
            raise AllowListError(f"{who}: the update must be an ArrayRecord named 'update'")
        else:
            _check_arrays(content.array_records[UPDATE_RECORD], spec, who)
    elif content.array_records:
        raise AllowListError(f"{who}: {kind} replies carry no arrays")
    if METRICS_RECORD not in content.metric_records:
        raise AllowListError(f"{who}: metrics must be a MetricRecord named 'metrics'")
    _check_metrics(content.metric_records[METRICS_RECORD], keys, who)


def check_incoming(
    content: RecordDict,
    *,
    kind: str,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None = None,
) -> None:
    """Server side: the allow-list check plus finiteness of every value.

    Raises :class:`AllowListError` for a reply that must not be aggregated.
    """
    check_outgoing(content, kind=kind, spec=spec, metric_keys=metric_keys)
    if kind == "train" and UPDATE_RECORD in content.array_records:
        for name, arr in content.array_records[UPDATE_RECORD].items():
            if not np.isfinite(arr.numpy()).all():
                raise AllowListError(f"incoming update {name!r} has non-finite values")
    for key, value in content.metric_records[METRICS_RECORD].items():
        if not np.isfinite(float(value)):  # type: ignore[arg-type]
            raise AllowListError(f"incoming metric {key!r} is not finite")


def scalar(value: object, name: str) -> float:
    """A record value that must be a single number (raises AllowListError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AllowListError(f"{name!r} must be a number, got {type(value).__name__}")
    return float(value)


def integer(value: object, name: str) -> int:
    """A record value that must be an integer (raises AllowListError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AllowListError(f"{name!r} must be an integer, got {type(value).__name__}")
    return value


def record_bytes(content: RecordDict) -> int:
    """Bytes of array payload plus 8 bytes per scalar metric or config value."""
    total = 0
    for record in content.array_records.values():
        total += sum(len(arr.data) for arr in record.values())
    for mrec in content.metric_records.values():
        total += 8 * len(mrec)
    for crec in content.config_records.values():
        total += sum(len(str(v)) for v in crec.values())
    return total
