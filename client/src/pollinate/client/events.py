"""A device's events as training data: the events whose items the catalogue knows.

Events for items the catalogue does not know are kept in the store and used once a later
catalogue knows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from pollinate.shared.catalogue import Catalogue
from pollinate.shared.errors import ConfigError

if TYPE_CHECKING:
    from pollinate.client.device_data import DeviceData
    from pollinate.client.store import Event


def known_events(events: Sequence[Event], catalogue: Catalogue) -> list[tuple[Event, int]]:
    """The events whose item the catalogue knows, with the item's row (time order kept)."""
    out = []
    for e in events:
        i = catalogue.index(e.item)
        if i is not None:
            out.append((e, i))
    return out


def device_data_of(
    events: Sequence[Event], catalogue: Catalogue, task: str, user_id: str = "device"
) -> DeviceData:
    """One user's :class:`DeviceData` from the events the catalogue knows (time order).

    ``ranking``: every known event but dislikes; split like leave-last-out (the last row
    test, the one before valid) when there are 3 or more, else all rows train.
    ``rating``: the events with a rating; with 10 or more, the last tenth by time is test
    and the twentieth before it valid, else all rows train.
    """
    from pollinate.client.device_data import DeviceData
    from pollinate.client.keys import StoreError
    from pollinate.shared.data.splits import Split
    from pollinate.shared.data.types import Interactions

    if task not in ("rating", "ranking"):
        raise ConfigError(f"task must be 'rating' or 'ranking', got {task!r}")
    known = known_events(events, catalogue)
    if task == "rating":
        rows = [(e, i) for e, i in known if e.rating is not None]
    else:
        rows = [(e, i) for e, i in known if e.positive]
    if not rows:
        raise StoreError(
            f"the device has no {'rated ' if task == 'rating' else ''}event for an item the "
            f"catalogue knows ({len(events)} events, {len(known)} known): nothing to train on"
        )
    n = len(rows)
    data = Interactions(
        name="device",
        users=np.zeros(n, dtype=np.int64),
        items=np.array([i for _, i in rows], dtype=np.int64),
        ratings=np.array([e.rating for e, _ in rows], dtype=np.float32)
        if task == "rating"
        else None,
        timestamps=np.array([e.timestamp for e, _ in rows], dtype=np.float64),
        user_ids=np.array([user_id]),
        item_ids=catalogue.item_ids,
        item_genres=catalogue.genres,
        genre_names=catalogue.genre_names,
        rating_scale=catalogue.rating_scale,
    )
    idx = np.arange(n)
    if task == "ranking" and n >= 3:
        split = Split(train=idx[:-2], valid=idx[-2:-1], test=idx[-1:])
    elif task == "rating" and n >= 10:
        n_test = max(1, n // 10)
        n_valid = max(1, n // 20)
        split = Split(
            train=idx[: n - n_test - n_valid],
            valid=idx[n - n_test - n_valid : n - n_test],
            test=idx[n - n_test :],
        )
    else:
        split = Split(train=idx, valid=idx[:0], test=idx[:0])
    return DeviceData(data, split, task)
