"""Turn the evaluation sums that devices return into the metric names of the reference."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

from pollinate.shared.metrics import (
    RANKING_SUM_NAMES,
    RATING_KEYS,
    ranking_metrics_from_sums,
    rating_metrics,
)

#: The ranking metrics every device computes (pollinate.client.evaluation).
_ACCURACY = ("hr", "recall", "ndcg", "mrr")

#: Ranking metrics given a standard error: the accuracy means at the reported cutoffs
#: (rating errors get theirs in :func:`standard_errors`).
RANKING_SE_METRICS = tuple(f"{m}@{k}" for k in (10, 20) for m in ("hr", "recall", "ndcg", "mrr"))


def add_sums(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


def finalize(task: str, sums: Mapping[str, float]) -> dict[str, float]:
    """The metrics of added-up device sums, for the sums that are present.

    Empty when nothing was evaluated (no sums, or a count that is not positive: every
    device refused, or noised counts summed to nothing). A complete set gives exactly
    :func:`~pollinate.shared.metrics.rating_metrics` /
    :func:`~pollinate.shared.metrics.ranking_metrics_from_sums`; a partial one (the
    reduced key sets of noised local-DP releases: rating errors, ``hr@10`` and
    ``ndcg@10``) gives the metrics whose sums are there. Noised sums below zero are taken
    as zero (post-processing).
    """
    count = float(sums.get("count", 0.0))
    if not sums or not math.isfinite(count) or count <= 0:
        return {}
    if task == "rating":
        if all(k in sums for k in RATING_KEYS) and min(sums["se_sum"], sums["ae_sum"]) >= 0:
            return rating_metrics(sums)
        out = {}
        if "se_sum" in sums:
            out["rmse"] = math.sqrt(max(float(sums["se_sum"]), 0.0) / count)
        if "ae_sum" in sums:
            out["mae"] = max(float(sums["ae_sum"]), 0.0) / count
        return out
    if all(f"{m}@{k}_sum" in sums for k in (10, 20) for m in _ACCURACY):
        return ranking_metrics_from_sums(sums, ks=(10, 20))
    return {
        f"{name}@{k}": max(float(sums[f"{name}@{k}_sum"]), 0.0) / count
        for k in (10, 20)
        for name in RANKING_SUM_NAMES
        if f"{name}@{k}_sum" in sums
    }


def _ratio_se(parts: Sequence[Mapping[str, float]], key: str) -> float | None:
    """Standard error of ``Σ s_i / Σ c_i`` over devices ``i`` (``s_i = part[key]``, ``c_i``
    its ``count``), each device a cluster of its own users' values:
    ``SE² = n/(n-1) · Σ (s_i − m·c_i)² / (Σ c_i)²`` (the linearised ratio estimator). With
    one user a device it is the sample standard deviation over users divided by ``√n``.
    ``None`` with fewer than two devices that hold an evaluated user."""
    used = [p for p in parts if float(p.get("count", 0)) > 0 and key in p]
    n = len(used)
    if n < 2:
        return None
    total_c = sum(float(p["count"]) for p in used)
    mean = sum(float(p[key]) for p in used) / total_c
    resid = sum((float(p[key]) - mean * float(p["count"])) ** 2 for p in used)
    return math.sqrt(n / (n - 1) * resid) / total_c


def standard_errors(task: str, parts: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Standard errors of :func:`finalize`'s metrics from the per-device sums it adds up.

    They measure how much the mean over *these* users would move with another draw of
    users (sampling noise of the evaluation), not the run-to-run noise of training. The
    server already receives each device's sums, so nothing more leaves a device.
    RMSE's comes from the MSE's by the delta method (``SE(√x) = SE(x) / (2√x)``).
    """
    out: dict[str, float] = {}
    if task == "rating":
        se_mse = _ratio_se(parts, "se_sum")
        rmse = finalize(task, add_sums(parts)).get("rmse")
        if se_mse is not None and rmse:
            out["rmse"] = se_mse / (2 * rmse)
        se_mae = _ratio_se(parts, "ae_sum")
        if se_mae is not None:
            out["mae"] = se_mae
        return out
    for name in RANKING_SE_METRICS:
        se = _ratio_se(parts, f"{name}_sum")
        if se is not None:
            out[name] = se
    return out
