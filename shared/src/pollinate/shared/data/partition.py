"""How a dataset is laid out on devices when each user is one device.

Device ``u`` holds every row of user ``u`` and nothing else. Which of its rows it trains,
validates and tests on follows the split of the whole dataset:

* **rating task** (:func:`~pollinate.shared.data.splits.rating_split`): the device's
  train/valid/test rows are the user's rows in the fold's train/valid/test sets, each in
  file order. A device may have no validation or test rows (or, for a user with few
  ratings, no training rows); the arrays are then empty.
* **ranking task** (:func:`~pollinate.shared.data.splits.leave_last_out`, after
  ``filter_min_interactions(data, 3)``): the device's training rows are its
  leave-last-out training rows in time order, then exactly one validation row (the
  second to last interaction) and one test row (the last).

Within each device, rows keep the order they have in the split's arrays (a stable sort
by user), so time order and file order survive. The work is O(n): one stable argsort
per part and offsets from a bincount, for a million users as for a hundred.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import overload

import numpy as np

from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions


class UserRows(Sequence[np.ndarray]):
    """Row indices grouped by user: ``rows_of[u]`` is user ``u``'s array (a view).

    Stored as one array and offsets (CSR), so a million users cost two arrays, not a
    million Python objects; ``list(rows_of)`` gives the per-user arrays when wanted.
    """

    def __init__(self, rows: np.ndarray, offsets: np.ndarray):
        self.rows = rows
        self.offsets = offsets

    @classmethod
    def group(cls, rows: np.ndarray, users: np.ndarray, n_users: int) -> UserRows:
        """Group ``rows`` by ``users[rows]``, keeping their order within each user."""
        rows = np.asarray(rows, dtype=np.int64)
        owner = users[rows]
        order = np.argsort(owner, kind="stable")
        offsets = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(owner, minlength=n_users), out=offsets[1:])
        return cls(rows[order], offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, u: int) -> np.ndarray: ...

    @overload
    def __getitem__(self, u: slice) -> list[np.ndarray]: ...

    def __getitem__(self, u: int | slice) -> np.ndarray | list[np.ndarray]:
        if isinstance(u, slice):
            return [self[i] for i in range(*u.indices(len(self)))]
        u = int(u)
        if u < 0:
            u += len(self)
        if not 0 <= u < len(self):
            raise IndexError(f"user {u} out of range 0..{len(self) - 1}")
        return self.rows[self.offsets[u] : self.offsets[u + 1]]

    def __iter__(self) -> Iterator[np.ndarray]:
        return iter(np.split(self.rows, self.offsets[1:-1]))

    def counts(self) -> np.ndarray:
        """Number of rows of every user."""
        return np.diff(self.offsets)


@dataclass(frozen=True)
class DevicePartition:
    """Per-device row indices of a split: ``train[u]``, ``valid[u]``, ``test[u]``."""

    train: UserRows
    valid: UserRows
    test: UserRows

    @property
    def n_devices(self) -> int:
        return len(self.train)

    def device(self, u: int) -> Split:
        """The rows of device ``u`` as a :class:`Split`."""
        return Split(train=self.train[u], valid=self.valid[u], test=self.test[u])


def partition_by_user(data: Interactions, split: Split) -> DevicePartition:
    """Partition ``split`` one device per user (see the module doc for the layout).

    Every user of ``data`` gets a device, ``data.n_users`` in all, even one with no rows
    in a part. The row indices index ``data``.
    """
    return DevicePartition(
        train=UserRows.group(split.train, data.users, data.n_users),
        valid=UserRows.group(split.valid, data.users, data.n_users),
        test=UserRows.group(split.test, data.users, data.n_users),
    )
