"""One device per user: partition_by_user."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.shared.data import (
    Interactions,
    Split,
    UserRows,
    filter_min_interactions,
    generate_synthetic,
    leave_last_out,
    partition_by_user,
    rating_split,
    remap_ids,
)


def _data() -> Interactions:
    users, user_ids = remap_ids(np.array([100, 200, 100, 100, 200, 100, 200]))
    items, item_ids = remap_ids(np.array([1, 2, 2, 3, 1, 4, 3]))
    return Interactions(
        name="t",
        users=users,
        items=items,
        ratings=np.array([1.0, 2, 3, 4, 5, 1, 2]),
        timestamps=np.array([5, 1, 3, 5, 2, 1, 2]),
        user_ids=user_ids,
        item_ids=item_ids,
    )


def test_ranking_layout_one_valid_one_test_item_per_device() -> None:
    data = filter_min_interactions(_data(), 3)
    part = partition_by_user(data, leave_last_out(data))
    assert part.n_devices == 2
    # user 100: rows 0 (t5), 2 (t3), 3 (t5), 5 (t1); user 200: rows 1 (t1), 4 (t2), 6 (t2)
    np.testing.assert_array_equal(part.train[0], [5, 2])
    np.testing.assert_array_equal(part.valid[0], [0])
    np.testing.assert_array_equal(part.test[0], [3])
    np.testing.assert_array_equal(part.train[1], [1])
    np.testing.assert_array_equal(part.valid[1], [4])
    np.testing.assert_array_equal(part.test[1], [6])
    device = part.device(1)
    assert isinstance(device, Split)
    np.testing.assert_array_equal(device.test, [6])


def test_rating_layout_is_the_users_rows_of_each_part() -> None:
    data, _ = generate_synthetic(120, 60, seed=4)
    split = rating_split(data, fold=1)
    part = partition_by_user(data, split)
    assert part.n_devices == data.n_users
    for name in ("train", "valid", "test"):
        rows = getattr(split, name)
        per_user = getattr(part, name)
        for u in range(data.n_users):
            mine = rows[data.users[rows] == u]
            np.testing.assert_array_equal(per_user[u], mine)  # same rows, same order
        assert per_user.counts().sum() == len(rows)


def test_device_holds_all_rows_of_its_user() -> None:
    data = filter_min_interactions(_data(), 3)
    part = partition_by_user(data, leave_last_out(data))
    for u in range(data.n_users):
        rows = np.concatenate([part.train[u], part.valid[u], part.test[u]])
        np.testing.assert_array_equal(np.sort(rows), np.flatnonzero(data.users == u))


def test_user_rows_sequence_behaviour() -> None:
    rows = UserRows.group(np.array([4, 0, 3, 1]), np.array([1, 0, 2, 1, 1]), n_users=3)
    assert len(rows) == 3
    # owners of rows 4, 0, 3, 1 are users 1, 1, 1, 0; order within a user is kept
    assert [r.tolist() for r in rows] == [[1], [4, 0, 3], []]
    np.testing.assert_array_equal(rows[-2], [4, 0, 3])
    assert [r.tolist() for r in rows[0:2]] == [[1], [4, 0, 3]]
    np.testing.assert_array_equal(rows.counts(), [1, 3, 0])
    with pytest.raises(IndexError):
        rows[3]


def test_many_users_is_linear_and_vectorized() -> None:
    n_users = 200_000
    users = np.repeat(np.arange(n_users), 3)[::-1].copy()
    data = Interactions(
        name="big",
        users=users,
        items=np.zeros(len(users), dtype=np.int64),
        ratings=None,
        timestamps=None,
        user_ids=np.arange(n_users),
        item_ids=np.arange(1),
    )
    split = Split(train=np.arange(len(users)), valid=np.arange(0), test=np.arange(0))
    part = partition_by_user(data, split)
    np.testing.assert_array_equal(part.train[0], [len(users) - 3, len(users) - 2, len(users) - 1])
    assert len(part.valid[123]) == 0
