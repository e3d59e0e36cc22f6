"""A summary of a dataset for people: :func:`dataset_info`."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from pollinate.shared.data.types import Interactions

NO_TIMESTAMPS = "file order (no timestamps)"
NO_RATINGS = "implicit (no ratings)"


def _iso_date(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), tz=UTC).date().isoformat()


def dataset_info(data: Interactions) -> dict[str, Any]:
    """Plain-Python facts about ``data`` (JSON-serialisable), for the CLI to print.

    Keys: ``name``, ``users``, ``items``, ``interactions``, ``density``, ``implicit``,
    ``rating_scale`` (``[lo, hi]`` or ``None``), ``rating_range`` (``[min, max]`` of the
    ratings present, or ``"implicit (no ratings)"``), ``time_span`` (``[first, last]``
    as ISO dates in UTC, or ``"file order (no timestamps)"``), ``genres`` (how many
    genre names), ``user_features`` (their names), and the ``min``/``mean``/``max``
    interactions per user.
    """
    activity = data.user_activity()
    info: dict[str, Any] = {
        "name": data.name,
        "users": data.n_users,
        "items": data.n_items,
        "interactions": data.n_interactions,
        "density": data.density,
        "implicit": data.implicit,
        "rating_scale": None if data.rating_scale is None else list(data.rating_scale),
        "rating_range": NO_RATINGS,
        "time_span": NO_TIMESTAMPS,
        "genres": len(data.genre_names),
        "user_features": sorted(data.user_features),
        "interactions_per_user": {
            "min": int(activity.min()) if len(activity) else 0,
            "mean": float(activity.mean()) if len(activity) else 0.0,
            "max": int(activity.max()) if len(activity) else 0,
        },
    }
    if data.ratings is not None and data.n_interactions:
        info["rating_range"] = [float(data.ratings.min()), float(data.ratings.max())]
    if data.timestamps is not None and data.n_interactions:
        info["time_span"] = [_iso_date(data.timestamps.min()), _iso_date(data.timestamps.max())]
    return info
