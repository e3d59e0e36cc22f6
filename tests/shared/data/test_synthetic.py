"""The synthetic generator: determinism, shape of the data, planted structure."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.shared.data import (
    generate_synthetic,
    load_dataset,
    synthetic_truth,
    validate_interactions,
)
from pollinate.shared.errors import ConfigError


@pytest.fixture(scope="module")
def default():
    return generate_synthetic(seed=0)


def _arrays(d):
    return [d.users, d.items, d.ratings, d.timestamps, d.user_ids, d.item_ids, d.item_genres]


def test_same_seed_same_data_other_seed_other_data() -> None:
    a, ta = generate_synthetic(200, 100, seed=7)
    b, tb = generate_synthetic(200, 100, seed=7)
    for x, y in zip(_arrays(a), _arrays(b), strict=True):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(ta.item_factors, tb.item_factors)
    c, _ = generate_synthetic(200, 100, seed=8)
    assert a.n_interactions != c.n_interactions or not np.array_equal(a.items, c.items)
    assert not np.array_equal(
        ta.user_factors, synthetic_truth(n_users=200, n_items=100, seed=8).user_factors
    )


def test_default_is_a_quick_demo(default) -> None:
    data, _ = default
    assert data.name == "synthetic"
    assert (data.n_users, data.n_items) == (1_000, 500)
    assert 20 <= data.n_interactions / data.n_users <= 50
    via_registry = load_dataset("synthetic")
    np.testing.assert_array_equal(via_registry.items, data.items)


def test_sizes_and_validity(default) -> None:
    data, truth = default
    validate_interactions(data)  # no empty users/items, no duplicates, ratings in scale
    assert data.user_activity().min() >= 5
    pairs = data.users * data.n_items + data.items
    assert len(np.unique(pairs)) == data.n_interactions  # no (user, item) repeats
    assert truth.user_factors.shape == (1_000, 8)
    assert truth.item_factors.shape == (data.n_items, 8)
    assert data.item_genres is not None and data.item_genres.shape == (data.n_items, 18)
    assert data.item_genres.any(axis=1).all()  # every item has a genre
    np.testing.assert_array_equal(data.user_ids, np.arange(1_000))


def test_ratings_are_integer_stars(default) -> None:
    data, _ = default
    assert data.rating_scale == (1.0, 5.0)
    assert set(np.unique(data.ratings)) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert 3.0 < data.ratings.mean() < 4.2


def test_popularity_and_activity_are_heavy_tailed(default) -> None:
    data, _ = default
    pop = np.sort(data.item_popularity())[::-1]
    assert pop[: len(pop) // 10].sum() > 0.3 * pop.sum()
    act = data.user_activity()
    assert act.max() > 5 * np.median(act)


def test_timestamps_increase_within_each_user_in_file_order(default) -> None:
    data, _ = default
    assert np.all(np.diff(data.users) >= 0)  # rows grouped by user
    same = data.users[1:] == data.users[:-1]
    assert np.all(np.diff(data.timestamps)[same] > 0)
    np.testing.assert_array_equal(data.time_order(), np.arange(data.n_interactions))


def test_ratings_follow_the_planted_factors(default) -> None:
    data, truth = default
    expected = truth.expected_rating(data.users, data.items)
    assert np.corrcoef(expected, data.ratings)[0, 1] > 0.6


def test_genres_follow_item_factors(default) -> None:
    data, truth = default
    g = truth.genre_factors / np.linalg.norm(truth.genre_factors, axis=1, keepdims=True)
    v = truth.item_factors / np.linalg.norm(truth.item_factors, axis=1, keepdims=True)
    cos = v @ g.T
    assert data.item_genres is not None
    assert cos[data.item_genres].mean() > cos[~data.item_genres].mean() + 0.5


def test_consecutive_items_are_related(default) -> None:
    """The drifting short-term interest makes neighbours in a sequence similar."""
    data, truth = default
    v = truth.item_factors / np.linalg.norm(truth.item_factors, axis=1, keepdims=True)
    same = data.users[1:] == data.users[:-1]
    consecutive = np.einsum("nk,nk->n", v[data.items[1:]], v[data.items[:-1]])[same].mean()
    rng = np.random.default_rng(0)
    shuffled = data.items[np.lexsort((rng.random(data.n_interactions), data.users))]
    baseline = np.einsum("nk,nk->n", v[shuffled[1:]], v[shuffled[:-1]])[same].mean()
    assert consecutive > baseline + 0.08


def test_tiny_and_odd_sizes() -> None:
    data, _ = generate_synthetic(50, 10, n_factors=2, n_genres=1, seed=1)
    assert data.n_users == 50 and data.user_activity().min() == 5  # capped at 10 // 2
    assert data.item_genres is not None and data.item_genres.all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_users": 0}, "n_users"),
        ({"n_items": 9}, "n_items must be at least 10"),
        ({"mean_activity": 5}, "mean_activity must be above 5"),
        ({"n_factors": 0}, "n_factors"),
        ({"n_genres": 0}, "n_genres"),
        ({"popularity_exponent": -1.0}, "popularity_exponent"),
    ],
)
def test_bad_options(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        generate_synthetic(**kwargs)
