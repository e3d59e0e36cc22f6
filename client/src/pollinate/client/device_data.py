"""The data one device holds: one user's interactions, split into train/valid/test.

A device's :class:`DeviceData` is an :class:`~pollinate.shared.data.types.Interactions`
with a single user (index 0) plus a :class:`~pollinate.shared.data.splits.Split` into its
rows. Simulated devices cut it out of a whole dataset (:func:`device_view`); an edge
device builds it from its own encrypted store. Either way the trainer and the evaluator
see the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np

from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError
from pollinate.shared.tasks import TaskData


@dataclass(frozen=True)
class DeviceData:
    data: Interactions
    split: Split
    task: str


class UserIndex:
    """Per-user row lists of each part of a split, built once in O(n log n)."""

    def __init__(self, task_data: TaskData) -> None:
        self.task_data = task_data

    def _by_user(self, rows: np.ndarray) -> list[np.ndarray]:
        users = self.task_data.data.users[rows]
        order = np.argsort(users, kind="stable")  # keeps each user's rows in split order
        bounds = np.searchsorted(users[order], np.arange(1, self.task_data.data.n_users))
        return np.split(rows[order], bounds)

    @cached_property
    def train(self) -> list[np.ndarray]:
        return self._by_user(self.task_data.split.train)

    @cached_property
    def valid(self) -> list[np.ndarray]:
        return self._by_user(self.task_data.split.valid)

    @cached_property
    def test(self) -> list[np.ndarray]:
        return self._by_user(self.task_data.split.test)

    def device(self, user: int) -> DeviceData:
        data = self.task_data.data
        if not 0 <= user < data.n_users:
            raise ConfigError(
                f"partition-id {user} is out of range: the dataset has {data.n_users} users"
            )
        tr, va, te = self.train[user], self.valid[user], self.test[user]
        rows = np.concatenate([tr, va, te])
        sub = data.rows(rows)
        one = replace(
            sub,
            users=np.zeros(len(rows), dtype=np.int64),
            user_ids=data.user_ids[user : user + 1],
            user_features={k: v[user : user + 1] for k, v in data.user_features.items()},
        )
        n_tr, n_va = len(tr), len(va)
        split = Split(
            train=np.arange(n_tr),
            valid=np.arange(n_tr, n_tr + n_va),
            test=np.arange(n_tr + n_va, len(rows)),
        )
        return DeviceData(one, split, self.task_data.task)


def device_view(task_data: TaskData, user: int) -> DeviceData:
    """Device ``user`` of a whole dataset (builds a fresh index; cache a UserIndex instead)."""
    return UserIndex(task_data).device(user)
