"""Splits (splits.py, types.py): exact indices pinned by hand."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.shared.data import (
    Interactions,
    filter_min_interactions,
    leave_last_out,
    rating_fold,
    rating_split,
    remap_ids,
)
from pollinate.shared.errors import ConfigError, DatasetError

# numpy.random.default_rng(0).permutation(10) == [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]; fold k's
# test rows are positions 2k, 2k+1 of it, sorted (checked by hand: disjoint, cover 0..9).
EXPECTED_TEST = [[4, 6], [2, 7], [3, 5], [0, 9], [1, 8]]


def test_permutation_is_the_documented_one() -> None:
    np.testing.assert_array_equal(
        np.random.default_rng(0).permutation(10), [4, 6, 2, 7, 3, 5, 9, 0, 8, 1]
    )


@pytest.mark.parametrize("fold", range(5))
def test_rating_fold_exact(fold: int) -> None:
    train, test = rating_fold(10, fold, seed=0)
    np.testing.assert_array_equal(test, EXPECTED_TEST[fold])
    np.testing.assert_array_equal(train, sorted(set(range(10)) - set(EXPECTED_TEST[fold])))


def test_rating_folds_partition_the_rows() -> None:
    tests = np.concatenate([rating_fold(10, k)[1] for k in range(5)])
    np.testing.assert_array_equal(np.sort(tests), np.arange(10))
    with pytest.raises(ConfigError, match=r"fold must be in 0\.\.4"):
        rating_fold(10, 5)


def _data(
    users: list[int],
    items: list[int],
    timestamps: list[int] | None,
    ratings: list[float] | None = None,
) -> Interactions:
    u, uid = remap_ids(np.array(users))
    i, iid = remap_ids(np.array(items))
    genres = np.zeros((len(iid), 2), dtype=bool)
    genres[:, 0] = iid % 2 == 0
    genres[:, 1] = True
    return Interactions(
        name="t",
        users=u,
        items=i,
        ratings=None if ratings is None else np.array(ratings, dtype=float),
        timestamps=None if timestamps is None else np.array(timestamps),
        user_ids=uid,
        item_ids=iid,
        item_genres=genres,
        genre_names=("even", "all"),
        user_features={"age": uid * 10},
    )


# Users A=100, B=200, C=300; items x=1, y=2, z=3, w=4, q=5.
ROWS_U = [100, 200, 100, 100, 200, 100, 300, 300, 200]
ROWS_I = [1, 2, 2, 3, 1, 4, 1, 5, 3]
ROWS_T = [5, 1, 3, 5, 2, 1, 9, 8, 2]


def test_rating_split_holds_out_5_percent_of_train() -> None:
    n = 40
    data = _data(list(range(n)), list(range(n)), None, [3.0] * n)
    split = rating_split(data, fold=2, seed=0)
    train, test = rating_fold(n, 2, seed=0)
    np.testing.assert_array_equal(split.test, test)
    assert len(split.valid) == len(train) // 20 == 1
    np.testing.assert_array_equal(np.sort(np.r_[split.train, split.valid]), train)
    assert np.all(np.diff(split.train) > 0)  # file order


def test_rating_split_needs_ratings() -> None:
    with pytest.raises(ConfigError, match=r"\(implicit feedback\); use the ranking task"):
        rating_split(_data(ROWS_U, ROWS_I, ROWS_T))


def test_filter_min_interactions_drops_users_below_3_and_remaps() -> None:
    data = filter_min_interactions(_data(ROWS_U, ROWS_I, ROWS_T), 3)
    # user C (2 rows) goes, and with it item q (only C had it)
    np.testing.assert_array_equal(data.user_ids, [100, 200])
    np.testing.assert_array_equal(data.item_ids, [1, 2, 3, 4])
    np.testing.assert_array_equal(data.users, [0, 1, 0, 0, 1, 0, 1])
    np.testing.assert_array_equal(data.items, [0, 1, 1, 2, 0, 3, 2])
    np.testing.assert_array_equal(data.timestamps, [5, 1, 3, 5, 2, 1, 2])
    assert data.item_genres is not None
    np.testing.assert_array_equal(data.item_genres[:, 0], [False, True, False, True])
    np.testing.assert_array_equal(data.user_features["age"], [1000, 2000])
    with pytest.raises(DatasetError, match="no user has 10 or more"):
        filter_min_interactions(data, 10)


def test_leave_last_out_with_timestamp_ties_in_file_order() -> None:
    data = filter_min_interactions(_data(ROWS_U, ROWS_I, ROWS_T), 3)
    split = leave_last_out(data)
    # A: rows 0 (t5), 2 (t3), 3 (t5), 5 (t1) -> time order 5, 2, 0, 3 (tie 0/3 in file order)
    # B: rows 1 (t1), 4 (t2), 6 (t2)        -> time order 1, 4, 6
    np.testing.assert_array_equal(split.train, [5, 2, 1])
    np.testing.assert_array_equal(split.valid, [0, 4])
    np.testing.assert_array_equal(split.test, [3, 6])


def test_leave_last_out_without_timestamps_uses_file_order() -> None:
    data = filter_min_interactions(_data(ROWS_U, ROWS_I, None), 3)
    split = leave_last_out(data)
    np.testing.assert_array_equal(split.train, [0, 2, 1])
    np.testing.assert_array_equal(split.valid, [3, 4])
    np.testing.assert_array_equal(split.test, [5, 6])


def test_leave_last_out_refuses_short_users() -> None:
    with pytest.raises(ConfigError, match=r"1 users have fewer than 3.*filter_min_interactions"):
        leave_last_out(_data(ROWS_U, ROWS_I, ROWS_T))
