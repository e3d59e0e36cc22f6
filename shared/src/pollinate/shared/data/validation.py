"""Validation of interaction rows: ratings, duplicates, empty users and items.

Duplicate policy
----------------
Two rows are duplicates when they have the same **(user, item, timestamp)**. Without
timestamps the rule depends on the feedback:

* explicit ratings without timestamps: the same **(user, item)** pair twice is a
  duplicate (two ratings of one item and no way to tell which is current);
* implicit feedback without timestamps (sequence files such as Amazon Beauty): rows are
  events in time order, so a repeated (user, item) pair is a repeat consumption and is
  **kept**.

By default (``duplicates="error"``) a duplicate raises a :class:`DatasetError` that names
the line of the first duplicate and the line of the row it repeats. With
``duplicates="keep-first"`` the first row in file order is kept and later copies are
dropped (their count is logged). No user or item can lose all its rows that way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args

import numpy as np
import pandas as pd

from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError, DatasetError

logger = logging.getLogger(__name__)

DuplicatePolicy = Literal["error", "keep-first"]
DUPLICATE_POLICIES: tuple[str, ...] = get_args(DuplicatePolicy)


class RowLocator(Protocol):
    """Maps a row index back to where it is in the source (for error messages)."""

    @property
    def path(self) -> Path | None: ...

    def line_of(self, row: int) -> int | None: ...


@dataclass(frozen=True)
class ArrayRows:
    """Rows that are not in a text file (Parquet, arrays): errors say ``row N``."""

    path: Path | None = None

    def line_of(self, row: int) -> int | None:
        return None


@dataclass(frozen=True)
class LineNumbers:
    """Rows whose line numbers are known up front (one line holds several rows)."""

    path: Path
    lines: np.ndarray

    def line_of(self, row: int) -> int | None:
        return int(self.lines[row])


def row_error(
    where: RowLocator, row: int, message: str, cls: type[DatasetError] = DatasetError
) -> DatasetError:
    """A :class:`DatasetError` for row ``row`` (0-based) that names its line, or its
    1-based row number where the source has no lines."""
    line = where.line_of(row)
    if line is None:
        message = f"row {row + 1}: {message}"
    return cls(message, path=where.path, line=line)


def check_duplicate_policy(duplicates: str) -> None:
    if duplicates not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"duplicates must be one of {', '.join(map(repr, DUPLICATE_POLICIES))}, "
            f"got {duplicates!r}"
        )


def check_ratings(
    ratings: np.ndarray,
    rating_scale: tuple[float, float] | None,
    where: RowLocator,
    dataset: str,
) -> None:
    """Every rating must be a finite number inside ``rating_scale`` (inclusive)."""
    if len(ratings) == 0:
        return
    bad = ~np.isfinite(ratings)
    if bad.any():
        r = int(np.argmax(bad))
        what = "NaN (not a number)" if np.isnan(ratings[r]) else f"{ratings[r]}"
        raise row_error(where, r, f"rating is {what}; every rating of {dataset} must be a number")
    if rating_scale is None:
        return
    lo, hi = rating_scale
    bad = (ratings < lo) | (ratings > hi)
    if bad.any():
        r = int(np.argmax(bad))
        raise row_error(
            where,
            r,
            f"rating {ratings[r]:g} is outside the rating scale {lo:g}..{hi:g} of {dataset}",
        )


def duplicate_mask(
    users: np.ndarray,
    items: np.ndarray,
    n_items: int,
    ratings: np.ndarray | None,
    timestamps: np.ndarray | None,
) -> np.ndarray | None:
    """Rows that repeat an earlier row under the duplicate policy; ``None`` when repeats
    are allowed (implicit feedback without timestamps)."""
    if timestamps is None and ratings is None:
        return None
    pair = pd.Series(users.astype(np.int64) * max(1, n_items) + items)
    if timestamps is None:
        return np.asarray(pair.duplicated(keep="first").to_numpy(), dtype=bool)
    # Only rows whose (user, item) pair repeats can repeat (user, item, timestamp) too:
    # hash one column for all rows, and all three only for those (usually none).
    dup = np.zeros(len(users), dtype=bool)
    candidates = np.flatnonzero(pair.duplicated(keep=False).to_numpy())
    if len(candidates):
        frame = pd.DataFrame({"pair": pair.to_numpy()[candidates], "t": timestamps[candidates]})
        dup[candidates] = frame.duplicated(keep="first").to_numpy()
    return dup


def remap(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Same result as :func:`~pollinate.shared.data.types.remap_ids` (ids in order of
    first appearance), by hashing in O(n) instead of sorting: faster on large files."""
    codes, uniques = pd.factorize(raw, sort=False, use_na_sentinel=False)
    return codes.astype(np.int64, copy=False), np.asarray(uniques, dtype=raw.dtype)


@dataclass(frozen=True)
class CheckedRows:
    """Validated rows with contiguous ids, in file order."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray | None
    timestamps: np.ndarray | None
    user_ids: np.ndarray
    item_ids: np.ndarray


def check_rows(
    *,
    dataset: str,
    users_raw: np.ndarray,
    items_raw: np.ndarray,
    ratings: np.ndarray | None,
    timestamps: np.ndarray | None,
    rating_scale: tuple[float, float] | None,
    duplicates: str,
    where: RowLocator,
) -> CheckedRows:
    """Validate raw rows, remap their ids and apply the duplicate policy."""
    check_duplicate_policy(duplicates)
    if len(users_raw) == 0:
        raise DatasetError(
            f"{dataset}: no interactions (the file has no data rows)", path=where.path
        )
    if ratings is not None:
        ratings = np.asarray(ratings, dtype=np.float64)
        check_ratings(ratings, rating_scale, where, dataset)
    users, user_ids = remap(users_raw)
    items, item_ids = remap(items_raw)
    dup = duplicate_mask(users, items, len(item_ids), ratings, timestamps)
    if dup is not None and dup.any():
        if duplicates == "error":
            r = int(np.argmax(dup))
            same = (users == users[r]) & (items == items[r])
            if timestamps is not None:
                same &= timestamps == timestamps[r]
            first = int(np.argmax(same))
            first_line = where.line_of(first)
            first_where = f"line {first_line}" if first_line is not None else f"row {first + 1}"
            key = "(user, item, timestamp)" if timestamps is not None else "(user, item)"
            what = f"user {user_ids[users[r]]}, item {item_ids[items[r]]}"
            if timestamps is not None:
                what += f", timestamp {timestamps[r]}"
            raise row_error(
                where,
                r,
                f"duplicate interaction ({what}) repeats {first_where}. Rows with the same "
                f"{key} are duplicates; remove them, or pass duplicates='keep-first' "
                "to keep only the first copy",
            )
        keep = np.flatnonzero(~dup)
        logger.info("%s: dropped %d duplicate rows (keep-first)", dataset, int(dup.sum()))
        users, items = users[keep], items[keep]
        ratings = None if ratings is None else ratings[keep]
        timestamps = None if timestamps is None else timestamps[keep]
    return CheckedRows(users, items, ratings, timestamps, user_ids, item_ids)


def validate_interactions(data: Interactions) -> None:
    """Check an :class:`Interactions` that was built or filtered by hand.

    Raises :class:`DatasetError` when a rating is NaN or outside ``rating_scale``, when a
    user or item of the id space has no interaction (filter with
    :func:`~pollinate.shared.data.types.filter_min_interactions`, which remaps ids), or
    when rows are duplicates under the module's duplicate policy.
    """
    where = ArrayRows()
    if data.n_interactions == 0:
        raise DatasetError(f"{data.name}: no interactions")
    if data.ratings is not None:
        check_ratings(data.ratings, data.rating_scale, where, data.name)
    for label, counts, ids in (
        ("users", data.user_activity(), data.user_ids),
        ("items", data.item_popularity(), data.item_ids),
    ):
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            shown = ", ".join(str(i) for i in ids[empty[:5]])
            more = "" if len(empty) <= 5 else f" and {len(empty) - 5} more"
            raise DatasetError(
                f"{data.name}: {len(empty)} {label} have no interactions (ids {shown}{more}); "
                "after dropping rows, remap ids with filter_min_interactions(data, 1)"
            )
    dup = duplicate_mask(data.users, data.items, data.n_items, data.ratings, data.timestamps)
    if dup is not None and dup.any():
        r = int(np.argmax(dup))
        raise row_error(
            where,
            r,
            f"{data.name}: duplicate interaction of user {data.user_ids[data.users[r]]} and "
            f"item {data.item_ids[data.items[r]]}",
        )
