"""The in-memory form of a dataset: interaction rows in file order, with id maps."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from pollinate.shared.errors import DatasetError


@dataclass(frozen=True)
class Interactions:
    """Interaction rows of one dataset, in the order of the source file.

    Ids are contiguous integers: ``users[r]`` is in ``[0, n_users)`` and ``items[r]``
    in ``[0, n_items)``. ``user_ids[u]`` and ``item_ids[i]`` map them back to the ids
    of the source file. Row order is the file order, which the splits rely on.

    ``ratings`` is ``None`` for implicit feedback. ``timestamps`` is ``None`` when the
    source has none; then the file order is the time order of each user.
    """

    name: str
    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray
    item_genres: np.ndarray | None = None
    genre_names: tuple[str, ...] = ()
    rating_scale: tuple[float, float] | None = None
    user_features: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.users)
        if len(self.items) != n:
            raise DatasetError(f"{self.name}: {n} users but {len(self.items)} items in rows")
        for label, arr in (("ratings", self.ratings), ("timestamps", self.timestamps)):
            if arr is not None and len(arr) != n:
                raise DatasetError(f"{self.name}: {label} has {len(arr)} rows, expected {n}")
        if n and (self.users.min() < 0 or self.users.max() >= len(self.user_ids)):
            raise DatasetError(f"{self.name}: user index out of range of user_ids")
        if n and (self.items.min() < 0 or self.items.max() >= len(self.item_ids)):
            raise DatasetError(f"{self.name}: item index out of range of item_ids")
        if self.item_genres is not None and self.item_genres.shape != (
            len(self.item_ids),
            len(self.genre_names),
        ):
            raise DatasetError(
                f"{self.name}: item_genres has shape {self.item_genres.shape}, expected "
                f"({len(self.item_ids)}, {len(self.genre_names)})"
            )

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    @property
    def n_interactions(self) -> int:
        return len(self.users)

    @property
    def implicit(self) -> bool:
        return self.ratings is None

    @property
    def density(self) -> float:
        return self.n_interactions / max(1, self.n_users * self.n_items)

    def rows(self, idx: np.ndarray) -> Interactions:
        """The rows at ``idx`` (in that order), keeping the id spaces unchanged."""
        return replace(
            self,
            users=self.users[idx],
            items=self.items[idx],
            ratings=None if self.ratings is None else self.ratings[idx],
            timestamps=None if self.timestamps is None else self.timestamps[idx],
        )

    def time_order(self) -> np.ndarray:
        """Row indices sorted by (user, timestamp), ties kept in file order (stable)."""
        if self.timestamps is None:
            return np.argsort(self.users, kind="stable")
        by_time = np.argsort(self.timestamps, kind="stable")
        return by_time[np.argsort(self.users[by_time], kind="stable")]

    def item_popularity(self) -> np.ndarray:
        """Interaction count of every item."""
        return np.bincount(self.items, minlength=self.n_items)

    def user_activity(self) -> np.ndarray:
        """Interaction count of every user."""
        return np.bincount(self.users, minlength=self.n_users)


def remap_ids(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map raw ids to contiguous integers in order of first appearance.

    Returns ``(index, ids)`` with ``ids[index] == raw``.
    """
    ids, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return rank[inverse].astype(np.int64), ids[order]


def filter_min_interactions(data: Interactions, min_per_user: int) -> Interactions:
    """Drop users with fewer than ``min_per_user`` rows and remap ids contiguously.

    Items left with no interaction are dropped as well; genres follow their items.
    """
    keep_user = data.user_activity() >= min_per_user
    rows = np.flatnonzero(keep_user[data.users])
    if len(rows) == 0:
        raise DatasetError(
            f"{data.name}: no user has {min_per_user} or more interactions; nothing is left"
        )
    sub = data.rows(rows)
    u_index, u_old = remap_ids(sub.users)
    i_index, i_old = remap_ids(sub.items)
    return replace(
        sub,
        users=u_index,
        items=i_index,
        user_ids=data.user_ids[u_old],
        item_ids=data.item_ids[i_old],
        item_genres=None if data.item_genres is None else data.item_genres[i_old],
        user_features={k: v[u_old] for k, v in data.user_features.items()},
    )
