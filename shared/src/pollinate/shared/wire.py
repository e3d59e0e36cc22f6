"""What may cross the wire between a device and the server, checked in code.

A device's reply is one of:

* a **train** reply: ``"update"``, an :class:`~flwr.app.ArrayRecord` whose arrays are
  the update to the **global** parameters, each with exactly the name, shape and dtype
  that the server sent (the :data:`ParamSpec`), and ``"metrics"``, a
  :class:`~flwr.app.MetricRecord` (:func:`train_metric_keys`); under interaction-level
  DP a device whose budget is spent sends ``{"local-epsilon", "dp-stopped"}`` and no
  update;
* an **evaluate** reply: evaluation sums only (:func:`eval_metric_keys`);
* an **enroll** reply: the device key only (:data:`ENROLL_METRIC_KEYS`);
* a **refusal**, whatever was asked: exactly one MetricRecord ``"metrics"`` =
  ``{"refused": CODE}`` with a code of :data:`REFUSAL_CODES`, and nothing else
  (:func:`refusal_content`).

Anything else (a local parameter, a raw item list, a rating, a ConfigRecord, an extra
record) makes :func:`check_outgoing` raise :class:`AllowListError` before sending.

The server applies :func:`check_incoming` to every reply. It checks the **decoded**
arrays, not only what an :class:`~flwr.app.Array` declares: a payload of shape (1, 16)
declared (1000, 16) would otherwise pass and be broadcast by the aggregation, giving one
device √1000 times its share. It also rejects non-finite values, an update whose L2 norm
exceeds :data:`MAX_UPDATE_NORM`, and numbers out of their range, and, given the run's
``dp`` mode, requires the **exact** metric key set of that mode (a reply with a key
missing is as malformed as one with a key too many).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict

from pollinate.shared.errors import PollinateError

#: name -> (shape, dtype string) of every global parameter.
ParamSpec = dict[str, tuple[tuple[int, ...], str]]

UPDATE_RECORD = "update"
METRICS_RECORD = "metrics"
GLOBAL_RECORD = "global"
CONFIG_RECORD = "config"
#: Server -> device only: the item catalogue (ids, genres, popularity, rating scale) as
#: an ArrayRecord of numeric and unicode arrays, sent beside the global model to real
#: devices (``send-catalogue``). No reply may carry it: a reply's records are exactly
#: those of its kind, so :func:`check_outgoing` refuses a device that would echo it.
CATALOGUE_RECORD = "catalogue"

KINDS = ("train", "evaluate", "enroll")
DP_MODES = ("none", "user", "local", "both")

#: Every metric key a device may send after training, in any DP mode (the legacy
#: allow-list, used when a caller does not say the run's DP mode).
TRAIN_METRIC_KEYS = frozenset(
    {"num-examples", "train-loss", "train-seconds", "local-epsilon", "dp-stopped"}
)
#: A training reply without interaction-level DP (``--dp none`` or ``user``).
PLAIN_TRAIN_KEYS = frozenset({"num-examples", "train-loss", "train-seconds"})
#: A training reply under interaction-level DP: the cumulative ε only. No example count
#: (n), no timing and no loss: each is computed on the raw rows without noise.
LOCAL_TRAIN_KEYS = frozenset({"local-epsilon"})
#: A device whose local budget is spent: no update, ``dp-stopped`` = 1.
STOPPED_TRAIN_KEYS = frozenset({"local-epsilon", "dp-stopped"})

#: The only metric of an enrollment reply: a stable pseudonymous key of the device,
#: so that seeded sampling and resumed runs pick the same devices whatever node ids
#: Flower assigns (its partition-id in a simulation, a random persisted key on a phone).
ENROLL_METRIC_KEYS = frozenset({"device-key"})

#: Rating-task evaluation sums.
RATING_EVAL_KEYS = frozenset({"se_sum", "ae_sum", "count"})

#: Per-user ranking metrics whose sums are bounded by the user count (each ≤ 1 a user).
_BOUNDED_RANKING = ("hr", "recall", "ndcg", "mrr", "diversity")
#: The ranking metrics a device computes (``pollinate.client.evaluation``): accuracy
#: always, ``diversity`` when the catalogue has genres, never novelty (no popularity).
_DEVICE_RANKING = ("hr", "recall", "ndcg", "mrr")
#: Cut-offs Pollinate reports.
EVAL_KS = (10, 20)


def ranking_eval_keys(
    ks: Iterable[int],
    names: Iterable[str] = ("hr", "ndcg", "recall", "mrr", "novelty", "diversity"),
) -> frozenset[str]:
    """Ranking-task evaluation sums for cut-offs ``ks`` (no coverage: see metrics)."""
    keys = {"count"}
    names = tuple(names)
    for k in ks:
        for m in names:
            keys.add(f"{m}@{k}_sum")
    return frozenset(keys)


#: Evaluation sums a device may send, for the cut-offs Pollinate reports (legacy union).
EVAL_METRIC_KEYS = RATING_EVAL_KEYS | ranking_eval_keys(EVAL_KS)
#: A device that holds no held-out rows: ``{"count": 0}`` and nothing else.
EMPTY_EVAL_KEYS = frozenset({"count"})
#: A noised (interaction-level DP) evaluation release.
LOCAL_RATING_EVAL_KEYS = frozenset({"se_sum", "ae_sum", "count", "local-epsilon"})
LOCAL_RANKING_EVAL_KEYS = frozenset({"count", "hr@10_sum", "ndcg@10_sum", "local-epsilon"})

#: A refusal: ``{"refused": CODE}``, the device's only reply to a request it declines.
REFUSAL_KEY = "refused"
#: Why a device refuses, as a code on the wire.
REFUSAL_CODES: dict[str, int] = {
    "policy": 1,  # the request would weaken the device's privacy policy
    "budget": 2,  # the device's privacy budget is exhausted
    "evaluation": 3,  # the device does not answer evaluation requests
    "no-data": 4,  # the device holds no rows for this request
    "state": 5,  # the device's store is missing or corrupt
}
_REFUSAL_NAMES = {code: name for name, code in REFUSAL_CODES.items()}

#: Largest L2 norm (over all arrays, in float64) of an update the server accepts. A
#: sanity bound, not a privacy clip: device updates are steps of a few learning rates
#: (norms of 10⁻³ to 10²); 10⁶ rules out only garbage, such as float32 values near their
#: maximum. Under ``--dp user`` the clip bounds every finite update anyway.
MAX_UPDATE_NORM = 1e6
#: Largest ``num-examples`` the server accepts (a device's training rows).
MAX_EXAMPLES = 10**9


class AllowListError(PollinateError):
    """A message would carry something that is not on the allow-list.

    ``reason`` is a short category for counting rejections (``"records"``, ``"arrays"``,
    ``"shape"``, ``"dtype"``, ``"decode"``, ``"non-finite"``, ``"norm"``,
    ``"metric-keys"``, ``"metric-type"``, ``"metric-value"``, ``"refusal"``); the
    message says what exactly was wrong.

    This is a privacy guard: never catch it to send the message anyway.
    """

    def __init__(self, message: str, reason: str = "allow-list") -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Reply:
    """A reply that passed :func:`check_incoming`: what the server may use of it."""

    kind: str
    #: The refusal's reason (a key of :data:`REFUSAL_CODES`), or None.
    refused: str | None = None
    #: The decoded update (train replies that carry one), else None.
    update: dict[str, np.ndarray] | None = None
    #: The metrics, as numbers (ints stay ints: a 63-bit device key must not round).
    metrics: dict[str, int | float] = field(default_factory=dict)
    #: The update's L2 norm, as the server's sanity check computed it (else None).
    norm: float | None = None

    @property
    def noised(self) -> bool:
        """Whether the reply is an interaction-level DP release (it carries its ε)."""
        return "local-epsilon" in self.metrics


def _local(dp: str) -> bool:
    if dp not in DP_MODES:
        raise ValueError(f"dp must be one of {DP_MODES}, got {dp!r}")
    return dp in ("local", "both")


def train_metric_keys(dp: str) -> frozenset[str]:
    """The exact metric keys of a training reply that carries an update, under ``dp``.

    Under ``--dp local``/``both`` a device whose budget is spent sends
    :data:`STOPPED_TRAIN_KEYS` and no update instead.
    """
    return LOCAL_TRAIN_KEYS if _local(dp) else PLAIN_TRAIN_KEYS


def eval_metric_keys(task: str, dp: str, *, genres: bool = False) -> frozenset[str]:
    """The exact metric keys of an evaluation reply, for ``task`` under ``dp``.

    Without interaction-level DP: the sums of ``pollinate.client.evaluation`` (rating
    errors; or the ranking accuracy sums at K = 10 and 20, with ``diversity`` when the
    catalogue has ``genres``). A device without held-out rows sends
    :data:`EMPTY_EVAL_KEYS` (``count`` = 0) instead. Under ``--dp local``/``both``: a
    noised release with its cumulative ``local-epsilon``.
    """
    if task not in ("rating", "ranking"):
        raise ValueError(f"task must be 'rating' or 'ranking', got {task!r}")
    if _local(dp):
        return LOCAL_RATING_EVAL_KEYS if task == "rating" else LOCAL_RANKING_EVAL_KEYS
    if task == "rating":
        return RATING_EVAL_KEYS
    names = (*_DEVICE_RANKING, "diversity") if genres else _DEVICE_RANKING
    return ranking_eval_keys(EVAL_KS, names)


def refusal_content(reason: str) -> RecordDict:
    """The whole content of a refusal for ``reason`` (a key of :data:`REFUSAL_CODES`)."""
    if reason not in REFUSAL_CODES:
        raise ValueError(f"unknown refusal reason {reason!r}; use one of {sorted(REFUSAL_CODES)}")
    return RecordDict({METRICS_RECORD: MetricRecord({REFUSAL_KEY: REFUSAL_CODES[reason]})})


def refusal_code(content: RecordDict) -> str | None:
    """The reason of a well-formed refusal, or None when ``content`` is not exactly one."""
    if set(content.keys()) != {METRICS_RECORD} or METRICS_RECORD not in content.metric_records:
        return None
    return _refusal_name(content.metric_records[METRICS_RECORD])


def _refusal_name(metrics: Mapping[str, object]) -> str | None:
    """The reason of metrics that are exactly a well-formed refusal, else None."""
    if set(metrics.keys()) != {REFUSAL_KEY}:
        return None
    code = metrics[REFUSAL_KEY]
    if isinstance(code, bool) or not isinstance(code, int):
        return None
    return _REFUSAL_NAMES.get(code)


def spec_of(params: Mapping[str, np.ndarray]) -> ParamSpec:
    """The spec (name -> shape, dtype) of a set of arrays."""
    return {n: (tuple(int(d) for d in a.shape), str(a.dtype)) for n, a in params.items()}


def arrays_to_record(params: Mapping[str, np.ndarray]) -> ArrayRecord:
    """Pack numpy arrays into an ArrayRecord, keeping names and order."""
    return ArrayRecord({n: Array(np.ascontiguousarray(a)) for n, a in params.items()})


def record_to_arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    """Unpack an ArrayRecord into numpy arrays by name."""
    return {n: arr.numpy() for n, arr in record.items()}


def _decode(name: str, arr: Array, who: str) -> np.ndarray:
    """The payload of ``arr`` as an ndarray; AllowListError for anything that is not one."""
    try:
        value = arr.numpy()
    except Exception as exc:  # any decoding failure is a rejection, never a crash
        raise AllowListError(
            f"{who}: array {name!r} does not decode as a numpy array ({type(exc).__name__}: {exc})",
            reason="decode",
        ) from None
    if not isinstance(value, np.ndarray):
        if hasattr(value, "close"):
            value.close()  # an .npz payload decodes to an open NpzFile
        raise AllowListError(
            f"{who}: array {name!r} decodes to a {type(value).__name__}, not an array",
            reason="decode",
        )
    return value


def _check_names(names: Iterable[str], spec: ParamSpec, who: str) -> None:
    names = set(names)
    extra = sorted(names - set(spec))
    if extra:
        raise AllowListError(
            f"{who}: arrays {extra} are not global parameters; only {sorted(spec)} may leave",
            reason="arrays",
        )
    missing = sorted(set(spec) - names)
    if missing:
        raise AllowListError(f"{who}: update lacks global parameters {missing}", reason="arrays")


def _decode_record(record: ArrayRecord, spec: ParamSpec, who: str) -> dict[str, np.ndarray]:
    """The arrays of ``record``, decoded; each declared and decoded as the spec says."""
    _check_names(record.keys(), spec, who)
    out: dict[str, np.ndarray] = {}
    for name, arr in record.items():
        shape, dtype = spec[name]
        if tuple(arr.shape) != shape or arr.dtype != dtype:
            raise AllowListError(
                f"{who}: array {name!r} is {arr.dtype}{tuple(arr.shape)}, "
                f"the allow-list says {dtype}{shape}",
                reason="shape" if tuple(arr.shape) != shape else "dtype",
            )
        value = _decode(name, arr, who)
        if value.shape != shape or value.dtype != dtype:
            raise AllowListError(
                f"{who}: array {name!r} declares {arr.dtype}{tuple(arr.shape)} but its payload "
                f"is {value.dtype}{value.shape}; the allow-list says {dtype}{shape}",
                reason="shape" if value.shape != shape else "dtype",
            )
        out[name] = value
    return out


def _sum_of_squares(value: np.ndarray) -> float:
    """``Σ v²``: by BLAS in float32 or float64 arrays' own type (a sanity bound and a log
    figure need no more than float32's accuracy; an overflow gives inf, which fails the
    bound), in float64 for other dtypes (float16 would overflow near 256)."""
    if value.dtype.kind == "f" and value.dtype.itemsize >= 4:
        flat = value.reshape(-1)
        with np.errstate(over="ignore", invalid="ignore"):
            return float(np.dot(flat, flat))
    return float(np.sum(np.square(value, dtype=np.float64)))


def _check_arrays(
    arrays: Mapping[str, object],
    spec: ParamSpec,
    who: str,
    *,
    incoming: bool,
    max_norm: float | None,
) -> tuple[dict[str, np.ndarray], float | None]:
    """The allow-list check of an update's decoded arrays: exactly the spec's names, each
    an ndarray of the spec's shape and dtype; on the server also finite, with an L2 norm
    at most ``max_norm``. Returns the arrays and that norm (``None``: not computed)."""
    _check_names(arrays.keys(), spec, who)
    out: dict[str, np.ndarray] = {}
    for name, value in arrays.items():
        shape, dtype = spec[name]
        if not isinstance(value, np.ndarray):
            raise AllowListError(
                f"{who}: array {name!r} is a {type(value).__name__}, not a numpy array",
                reason="decode",
            )
        if value.shape != shape or value.dtype != dtype:  # str(dtype) is slow
            raise AllowListError(
                f"{who}: array {name!r} is {value.dtype}{value.shape}; the allow-list says "
                f"{dtype}{shape}",
                reason="shape" if value.shape != shape else "dtype",
            )
        if incoming and not np.isfinite(value).all():
            raise AllowListError(
                f"incoming update {name!r} has non-finite values", reason="non-finite"
            )
        out[name] = value
    norm = None
    if incoming and max_norm is not None:
        norm = math.sqrt(sum(_sum_of_squares(v) for v in out.values()))
        if not norm <= max_norm:
            raise AllowListError(
                f"incoming update has L2 norm {norm:.4g}, above the sanity bound {max_norm:g}",
                reason="norm",
            )
    return out, norm


def _numbers(record: Mapping[str, object], who: str, *, incoming: bool) -> dict[str, int | float]:
    """Every metric as a plain number (never a bool or a list); finite on the server."""
    out: dict[str, int | float] = {}
    for key, value in record.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AllowListError(
                f"{who}: metric {key!r} must be a scalar number, not {type(value).__name__}",
                reason="metric-type",
            )
        if incoming:
            try:
                finite = math.isfinite(float(value))
            except OverflowError:
                finite = False
            if not finite:
                raise AllowListError(f"incoming metric {key!r} is not finite", reason="non-finite")
        out[key] = value
    return out


def _check_keys(
    keys: set[str], allowed: Iterable[frozenset[str]], who: str, *, exact: bool
) -> None:
    options = list(allowed)
    if exact:
        if any(keys == option for option in options):
            return
        want = " or ".join(str(sorted(o)) for o in options)
        raise AllowListError(
            f"{who}: metric keys {sorted(keys)} are not exactly {want}", reason="metric-keys"
        )
    extra = sorted(keys - frozenset().union(*options))
    if extra:
        raise AllowListError(
            f"{who}: metric keys {extra} are not on the allow-list", reason="metric-keys"
        )


def _value_error(who: str, message: str) -> AllowListError:
    return AllowListError(f"{who}: {message}", reason="metric-value")


def _check_values(kind: str, metrics: Mapping[str, int | float], who: str) -> None:
    """Server side: every number within the range its meaning allows."""
    for key in ("num-examples", "device-key"):
        if key in metrics:
            value = metrics[key]
            if not isinstance(value, int) or value < 0:
                raise _value_error(who, f"{key!r} must be a non-negative integer, got {value!r}")
    if metrics.get("num-examples", 0) > MAX_EXAMPLES:
        raise _value_error(who, f"'num-examples' above {MAX_EXAMPLES}")
    for key in ("train-seconds", "local-epsilon"):
        if key in metrics and float(metrics[key]) < 0:
            raise _value_error(who, f"{key!r} must be >= 0, got {metrics[key]!r}")
    if "dp-stopped" in metrics and metrics["dp-stopped"] != 1:
        raise _value_error(who, f"'dp-stopped' must be 1, got {metrics['dp-stopped']!r}")
    if kind != "evaluate" or "local-epsilon" in metrics:
        return  # a noised release may take any finite value
    count = float(metrics.get("count", 0.0))
    for key, value in metrics.items():
        if float(value) < 0:
            raise _value_error(who, f"evaluation sum {key!r} is negative ({value!r})")
        name = key.split("@", 1)[0]
        if "@" in key and name in _BOUNDED_RANKING and float(value) > count * (1 + 1e-6) + 1e-9:
            raise _value_error(who, f"{key!r} = {value!r} exceeds the user count {count:g}")


def _check(
    content: RecordDict,
    *,
    kind: str,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None,
    dp: str | None,
    task: str | None,
    genres: bool,
    incoming: bool,
    max_norm: float | None,
) -> Reply:
    """The checks of a reply's records, then :func:`_check_parts` on their content (the
    update's arrays decoded where it looks at them)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be 'train', 'evaluate' or 'enroll', got {kind!r}")
    who = f"{'incoming' if incoming else 'outgoing'} {kind} reply"
    refused = refusal_code(content)
    if refused is not None:
        return Reply(kind, refused=refused)
    allowed_records = {UPDATE_RECORD, METRICS_RECORD} if kind == "train" else {METRICS_RECORD}
    extra = sorted(set(content.keys()) - allowed_records)
    if extra:
        raise AllowListError(f"{who}: records {extra} may not leave a device", reason="records")
    if content.config_records:
        raise AllowListError(f"{who}: config records may not leave a device", reason="records")
    if METRICS_RECORD not in content.metric_records:
        raise AllowListError(
            f"{who}: metrics must be a MetricRecord named 'metrics'", reason="records"
        )
    record = content.array_records.get(UPDATE_RECORD)
    return _check_parts(
        kind,
        None if record is None else lambda: _decode_record(record, spec, who),
        content.metric_records[METRICS_RECORD],
        who,
        spec=spec,
        metric_keys=metric_keys,
        dp=dp,
        task=task,
        genres=genres,
        incoming=incoming,
        max_norm=max_norm,
    )


def _check_parts(
    kind: str,
    update: Callable[[], Mapping[str, object]] | None,
    record: Mapping[str, object],
    who: str,
    *,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None,
    dp: str | None,
    task: str | None,
    genres: bool,
    incoming: bool,
    max_norm: float | None,
) -> Reply:
    """The allow-list check of a reply's content: ``update`` (``None`` when the reply
    carries no arrays; else a callable giving its decoded arrays) and its metrics."""
    local = _local(dp) if dp is not None else None
    if REFUSAL_KEY in record:
        raise AllowListError(
            f"{who}: a refusal is exactly {{'refused': CODE}} with a code of "
            f"{sorted(REFUSAL_CODES.values())} and nothing else; got {dict(record)!r}",
            reason="refusal",
        )
    metrics = _numbers(record, who, incoming=incoming)
    keys = set(metrics)
    exact = dp is not None and metric_keys is None
    checked: dict[str, np.ndarray] | None = None
    norm: float | None = None
    if kind == "train":
        stopped = "dp-stopped" in metrics and (metrics["dp-stopped"] == 1 or exact)
        if stopped:
            if exact and not local:
                raise AllowListError(
                    f"{who}: 'dp-stopped' exists only under interaction-level DP (this run "
                    f"is --dp {dp})",
                    reason="metric-keys",
                )
            if update is not None:
                raise AllowListError(
                    f"{who}: a device that stopped (dp-stopped) sends no arrays", reason="records"
                )
            options = [STOPPED_TRAIN_KEYS]
        else:
            if update is None:
                raise AllowListError(
                    f"{who}: the update must be an ArrayRecord named 'update'", reason="records"
                )
            checked, norm = _check_arrays(update(), spec, who, incoming=incoming, max_norm=max_norm)
            options = [train_metric_keys(dp)] if exact else []  # type: ignore[arg-type]
        if not exact:
            options = [TRAIN_METRIC_KEYS if metric_keys is None else metric_keys]
    else:
        if update is not None:
            raise AllowListError(f"{who}: {kind} replies carry no arrays", reason="records")
        if kind == "enroll":
            options = [ENROLL_METRIC_KEYS if metric_keys is None else metric_keys]
            exact = metric_keys is None  # a device key, always, and nothing else
        elif exact:
            if task is None:
                raise ValueError("check an evaluation reply's exact keys with task= and dp=")
            options = [eval_metric_keys(task, dp, genres=genres)]  # type: ignore[arg-type]
            if not local and keys == EMPTY_EVAL_KEYS:
                if metrics["count"] != 0:
                    raise _value_error(who, "a reply of 'count' alone must have count 0")
                options.append(EMPTY_EVAL_KEYS)
        else:
            options = [EVAL_METRIC_KEYS if metric_keys is None else metric_keys]
    _check_keys(keys, options, who, exact=exact)
    if incoming:
        _check_values(kind, metrics, who)
    return Reply(kind, update=checked, metrics=metrics, norm=norm)


def check_reply(
    kind: str,
    update: Mapping[str, np.ndarray] | None,
    metrics: Mapping[str, object],
    *,
    spec: ParamSpec,
    incoming: bool,
    dp: str | None = None,
    task: str | None = None,
    genres: bool = False,
    metric_keys: frozenset[str] | None = None,
    max_norm: float | None = MAX_UPDATE_NORM,
) -> Reply:
    """The allow-list check of a reply that is already decoded: the update's arrays
    (``None``: the reply carries none) and its metrics, exactly what would be packed into
    the ``"update"`` and ``"metrics"`` records.

    The same checks :func:`check_outgoing` (``incoming=False``) and :func:`check_incoming`
    (``incoming=True``) apply after decoding a message: names, shapes and dtypes of the
    arrays, exact metric keys, and on the server finiteness, the norm bound and value
    ranges. The fast engine (``pollinate.simulations.fast``) uses it where a reply never
    becomes a message. A refusal is ``metrics = {"refused": CODE}`` and no update.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be 'train', 'evaluate' or 'enroll', got {kind!r}")
    refused = _refusal_name(metrics) if update is None else None
    if refused is not None:
        return Reply(kind, refused=refused)
    return _check_parts(
        kind,
        None if update is None else lambda: update,
        metrics,
        f"{'incoming' if incoming else 'outgoing'} {kind} reply",
        spec=spec,
        metric_keys=metric_keys,
        dp=dp,
        task=task,
        genres=genres,
        incoming=incoming,
        max_norm=max_norm if incoming else None,
    )


def check_outgoing(
    content: RecordDict,
    *,
    kind: str,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None = None,
    dp: str | None = None,
    task: str | None = None,
    genres: bool = False,
) -> None:
    """Raise :class:`AllowListError` unless ``content`` is on the allow-list.

    ``kind`` is ``"train"`` (an update plus training metrics), ``"evaluate"``
    (evaluation sums only, no arrays) or ``"enroll"`` (the device key only). A
    well-formed refusal (:func:`refusal_content`) passes for every kind.

    With ``dp`` (the run's mode; and ``task`` for evaluations) the metric keys must be
    exactly those of :func:`train_metric_keys` / :func:`eval_metric_keys`; without it,
    any subset of ``metric_keys`` (default: every key of the kind, in any mode). The
    update's arrays are decoded and must have the spec's shape and dtype.
    """
    _check(
        content,
        kind=kind,
        spec=spec,
        metric_keys=metric_keys,
        dp=dp,
        task=task,
        genres=genres,
        incoming=False,
        max_norm=None,
    )


def check_incoming(
    content: RecordDict,
    *,
    kind: str,
    spec: ParamSpec,
    metric_keys: frozenset[str] | None = None,
    dp: str | None = None,
    task: str | None = None,
    genres: bool = False,
    max_norm: float | None = MAX_UPDATE_NORM,
) -> Reply:
    """Server side: the allow-list check on the decoded content, plus the values' sanity.

    Every value finite, the update's L2 norm at most ``max_norm``, counts non-negative
    integers, un-noised evaluation sums within their range. Returns what the server may
    use (the decoded update, the metrics, or the refusal's reason); raises
    :class:`AllowListError` (with a ``reason``) for a reply that must not be used.
    """
    return _check(
        content,
        kind=kind,
        spec=spec,
        metric_keys=metric_keys,
        dp=dp,
        task=task,
        genres=genres,
        incoming=True,
        max_norm=max_norm,
    )


def scalar(value: object, name: str) -> float:
    """A record value that must be a single number (raises AllowListError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise AllowListError(
            f"{name!r} must be a number, got {type(value).__name__}", reason="metric-type"
        )
    return float(value)


def integer(value: object, name: str) -> int:
    """A record value that must be an integer (raises AllowListError otherwise)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise AllowListError(
            f"{name!r} must be an integer, got {type(value).__name__}", reason="metric-type"
        )
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
