"""The data one device holds: one user's interactions, split into train/valid/test.

A device's :class:`DeviceData` is an :class:`~pollinate.shared.data.types.Interactions`
with a single user (index 0) plus a :class:`~pollinate.shared.data.splits.Split` into its
rows. Simulated devices cut it out of a whole dataset (:func:`device_view`); an edge
device builds it from its own encrypted store. Either way the trainer and the evaluator
see the same thing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pollinate.shared.data.partition import partition_by_user
from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError
from pollinate.shared.tasks import TaskData


@dataclass(frozen=True)
class DeviceData:
    data: Interactions
    split: Split
    task: str


class DeviceIndex:
    """Cuts one-user :class:`DeviceData` out of a whole dataset (the simulation source)."""

    def __init__(self, task_data: TaskData) -> None:
        self.task_data = task_data
        self.partition = partition_by_user(task_data.data, task_data.split)

    @property
    def n_devices(self) -> int:
        return self.partition.n_devices

    def device(self, user: int) -> DeviceData:
        data = self.task_data.data
        if not 0 <= user < data.n_users:
            raise ConfigError(
                f"partition-id {user} is out of range: the dataset has {data.n_users} users"
            )
        own = self.partition.device(user)
        rows = np.concatenate([own.train, own.valid, own.test])
        sub = data.rows(rows)
        one = replace(
            sub,
            users=np.zeros(len(rows), dtype=np.int64),
            user_ids=data.user_ids[user : user + 1],
            user_features={k: v[user : user + 1] for k, v in data.user_features.items()},
        )
        n_tr, n_va = len(own.train), len(own.valid)
        split = Split(
            train=np.arange(n_tr),
            valid=np.arange(n_tr, n_tr + n_va),
            test=np.arange(n_tr + n_va, len(rows)),
        )
        return DeviceData(one, split, self.task_data.task)


def with_validation_in_training(device: DeviceData) -> DeviceData:
    """The device with its validation rows moved into its training rows.

    The federated analog of the centralized reference's refit on training + validation
    rows (``--train-on-validation``): the device trains on every row but its test rows.
    Its test rows and their context (training + validation rows) are unchanged, so test
    metrics stay comparable; it has no validation rows left to evaluate on.
    """
    split = device.split
    merged = Split(
        train=np.concatenate([split.train, split.valid]),
        valid=np.zeros(0, dtype=split.valid.dtype),
        test=split.test,
    )
    return replace(device, split=merged)


def device_view(task_data: TaskData, user: int) -> DeviceData:
    """Device ``user`` of a whole dataset (builds a fresh index; cache a UserIndex instead)."""
    return DeviceIndex(task_data).device(user)
