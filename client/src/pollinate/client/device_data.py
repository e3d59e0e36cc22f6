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
from pollinate.shared.privacy.interaction_canaries import InteractionCanaries, canary_rating
from pollinate.shared.tasks import TaskData


@dataclass(frozen=True)
class DeviceData:
    data: Interactions
    split: Split
    task: str


class DeviceIndex:
    """Cuts one-user :class:`DeviceData` out of a whole dataset (the simulation source)."""

    #: Devices kept once cut out (a process plays the same devices round after round);
    #: bounded so that a worker of 100,000 devices does not hold a second copy of them all.
    CACHED_DEVICES = 4096

    def __init__(self, task_data: TaskData) -> None:
        self.task_data = task_data
        self.partition = partition_by_user(task_data.data, task_data.split)
        self._cache: dict[int, DeviceData] = {}

    @property
    def n_devices(self) -> int:
        return self.partition.n_devices

    def device(self, user: int) -> DeviceData:
        found = self._cache.get(user)
        if found is None:
            found = self._cut(user)
            if len(self._cache) < self.CACHED_DEVICES:
                self._cache[user] = found
        return found

    def _cut(self, user: int) -> DeviceData:
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
        for part in (one.users, one.items, one.ratings, one.timestamps, split.train,
                     split.valid, split.test):  # fmt: skip
            if isinstance(part, np.ndarray):
                part.flags.writeable = False  # shared by every message of this device
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


def with_interaction_canaries(
    device: DeviceData, canaries: InteractionCanaries, user: int
) -> DeviceData:
    """Device ``user`` with the audit's canary items in its catalogue and its canary rows
    (each naming a canary item or the sink, by the secret coin) among its training rows.

    Every device gets the extra items, so every model has the run's global shapes; only
    the canaries' hosts get rows. A canary row has the top rating and the timestamp of
    the device's last training row (it is a training row whatever the split).
    """
    data = device.data
    if data.n_items != canaries.n_items:
        raise ConfigError(
            f"the interaction canaries were made for {canaries.n_items} items, the device's "
            f"catalogue has {data.n_items}; the run's audit file does not fit its data"
        )
    rows = canaries.rows_of(user)
    k = len(rows)
    genres = data.item_genres
    if genres is not None:
        genres = np.concatenate(
            [genres, np.zeros((canaries.extra_items, genres.shape[1]), genres.dtype)]
        )
    train_rows = device.split.train
    stamp = None
    if data.timestamps is not None:
        stamp = (
            data.timestamps[train_rows].max() if len(train_rows) else data.timestamps.min(initial=0)
        )
    extended = replace(
        data,
        users=np.concatenate([data.users, np.zeros(k, data.users.dtype)]),
        items=np.concatenate([data.items, np.asarray(rows, dtype=data.items.dtype)]),
        ratings=None
        if data.ratings is None
        else np.concatenate(
            [data.ratings, np.full(k, canary_rating(data.rating_scale), data.ratings.dtype)]
        ),
        timestamps=None
        if data.timestamps is None
        else np.concatenate([data.timestamps, np.full(k, stamp, data.timestamps.dtype)]),
        item_ids=np.concatenate([data.item_ids, np.asarray(canaries.item_ids(), dtype=object)]),
        item_genres=genres,
    )
    n = data.n_interactions
    split = Split(
        train=np.concatenate([train_rows, np.arange(n, n + k, dtype=train_rows.dtype)]),
        valid=device.split.valid,
        test=device.split.test,
    )
    return DeviceData(extended, split, device.task)
