"""Train/validation/test splits, defined exactly so other tools can reproduce them.

``rating`` task, five folds over the rating rows::

    perm = numpy.random.default_rng(seed).permutation(n)   # rows in file order
    test(k) = perm[k*n//5 : (k+1)*n//5]
    train(k) = every other row, in file order

For early stopping, the rating task holds out validation rows *from the training
fold*: ``numpy.random.default_rng([seed, k]).permutation(len(train))`` and the first
``len(train)//20`` positions (5%) of it, mapped through ``train``, are validation.

``ranking`` task, leave-last-out: users with fewer than 3 interactions are dropped
(see :func:`pollinate.shared.data.types.filter_min_interactions`); each user's rows are
sorted by timestamp with ties kept in file order (a stable sort; files without
timestamps are already in time order). The last row is the test item, the one before
it the validation item, the rest are training rows. Every rating is an interaction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError

N_FOLDS = 5
VALIDATION_FRACTION_DENOMINATOR = 20
MIN_RANKING_INTERACTIONS = 3


@dataclass(frozen=True)
class Split:
    """Row indices into an :class:`Interactions`.

    Rating splits list rows in file order. Ranking splits list training rows grouped by
    user, each user's in time order, and one validation and one test row per user.
    """

    train: np.ndarray
    valid: np.ndarray
    test: np.ndarray


def rating_fold(n: int, fold: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` row indices of fold ``fold`` out of five (see module doc)."""
    if not 0 <= fold < N_FOLDS:
        raise ConfigError(f"fold must be in 0..{N_FOLDS - 1}, got {fold}")
    perm = np.random.default_rng(seed).permutation(n)
    test = perm[fold * n // N_FOLDS : (fold + 1) * n // N_FOLDS]
    mask = np.ones(n, dtype=bool)
    mask[test] = False
    return np.flatnonzero(mask), np.sort(test)


def rating_split(data: Interactions, fold: int = 0, seed: int = 0) -> Split:
    """Fold ``fold`` of the rating task, with 5% of the training fold held out."""
    if data.ratings is None:
        raise ConfigError(
            f"{data.name} has no ratings (implicit feedback); use the ranking task instead"
        )
    train, test = rating_fold(data.n_interactions, fold, seed)
    inner = np.random.default_rng([seed, fold]).permutation(len(train))
    n_valid = len(train) // VALIDATION_FRACTION_DENOMINATOR
    valid_mask = np.zeros(len(train), dtype=bool)
    valid_mask[inner[:n_valid]] = True
    return Split(train=train[~valid_mask], valid=train[valid_mask], test=test)


def leave_last_out(data: Interactions) -> Split:
    """Leave-last-out split of data whose users all have at least 3 rows.

    Call :func:`~pollinate.shared.data.types.filter_min_interactions` first. Training rows
    come grouped by user, each user's in time order.
    """
    counts = data.user_activity()
    if (counts < MIN_RANKING_INTERACTIONS).any():
        bad = int((counts < MIN_RANKING_INTERACTIONS).sum())
        raise ConfigError(
            f"{data.name}: {bad} users have fewer than {MIN_RANKING_INTERACTIONS} interactions;"
            " filter them with filter_min_interactions(data, 3) first"
        )
    order = data.time_order()
    users_sorted = data.users[order]
    last = np.flatnonzero(np.r_[users_sorted[1:] != users_sorted[:-1], True])
    test = order[last]
    valid = order[last - 1]
    keep = np.ones(len(order), dtype=bool)
    keep[last] = False
    keep[last - 1] = False
    return Split(train=order[keep], valid=valid, test=test)
