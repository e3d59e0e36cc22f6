"""Turn the evaluation sums that devices return into the metric names of the reference."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pollinate.shared.metrics import ranking_metrics_from_sums, rating_metrics


def add_sums(parts: Iterable[Mapping[str, float]]) -> dict[str, float]:
    total: dict[str, float] = {}
    for part in parts:
        for k, v in part.items():
            total[k] = total.get(k, 0.0) + float(v)
    return total


def finalize(task: str, sums: Mapping[str, float]) -> dict[str, float]:
    if not sums or sums.get("count", 0) == 0:
        return {}
    if task == "rating":
        return rating_metrics(sums)
    return ranking_metrics_from_sums(sums, ks=(10, 20))
