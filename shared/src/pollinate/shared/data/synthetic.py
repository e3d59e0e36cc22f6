"""The synthetic dataset: planted structure that models should recover.

Generative story (every draw comes from ``numpy.random.default_rng(seed)`` and streams
spawned from it; nothing touches a global RNG):

* **Planted factors.** Users and items get latent vectors ``U (n_users, k)`` and
  ``V (n_items, k)`` with entries ``N(0, k**-0.5)`` (so ``U·V`` has unit variance),
  and biases ``b_u, b_i ~ N(0, 0.3²)``.
* **Popularity.** Item ``i`` has a Zipf weight ``rank_i ** -popularity_exponent``
  (ranks are a random permutation), so a few items take most interactions.
* **Activity.** Each user has ``5 + round(Lomax(2) * (mean_activity - 5))`` interactions
  (a power law with minimum 5 and mean about ``mean_activity``), capped at half the
  items (so the mean is lower when ``mean_activity`` nears ``n_items / 2``).
* **Genres.** ``n_genres`` genre directions ``G (n_genres, k)``; an item belongs to the
  genre its factor vector is closest to (cosine) and to any other genre whose cosine is
  in the top ``1 / n_genres`` quantile: multi-hot genres that follow the factors.
* **Sequences with drifting short-term interest.** Each user has a short-term interest
  vector ``z``. At each step, ``z`` first takes a random-walk step; when a new session
  starts (15 % of steps, gap ``~ Exp(3 days)``; otherwise ``~ Exp(20 min)``) it mostly
  fades. The next item is drawn from ``popularity × exp(2 · V_i · (U_u + z))`` (Gumbel-max
  over 16 candidates drawn by popularity), never an item the user already has. Then
  ``z ← 0.5 z + 0.5 V_item``: recent items pull the next ones towards them, which a
  sequence model can exploit and a static model cannot.
* **Ratings.** ``clip(round(2.9 + b_u + b_i + 0.8 U_u·V_i + N(0, 0.6²)), 1, 5)``: integer
  stars from the long-term factors only.
* **Timestamps.** Each user starts at a uniform time in 2015-2016; timestamps are the
  start plus the cumulated gaps, strictly increasing per user.

Rows are grouped by user (user 0 first), each user's in time order. Item ids are
remapped in order of first appearance like every loader; ``item_ids`` holds the planted
item index, and :class:`SyntheticTruth` is indexed by the *internal* ids of the returned
data (``truth.item_factors[data.items]`` are the factors of each row's item).

Work is vectorized across users, in chunks of users with similar activity, so memory
stays bounded: one million users with the default mean activity of 30 take roughly a
gigabyte for the result.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError

MIN_ACTIVITY = 5
RATING_SCALE = (1.0, 5.0)
DEFAULTS: Mapping[str, Any] = {
    "n_users": 1000,
    "n_items": 500,
    "n_factors": 8,
    "mean_activity": 30.0,
    "n_genres": 18,
    "popularity_exponent": 1.0,
    "seed": 0,
}

_ACTIVITY_TAIL = 2.0
_CANDIDATES = 16
_CHOICE_SHARPNESS = 2.0
_SHORT_TERM_WEIGHT = 1.0
_SHORT_TERM_PULL = 0.5
_SESSION_FADE = 0.2
_DRIFT_STD = 0.15
_NEW_SESSION_P = 0.15
_SESSION_GAP_S = 3 * 86_400.0
_IN_SESSION_GAP_S = 20 * 60.0
_T0 = 1_420_070_400  # 2015-01-01T00:00:00Z
_START_SPAN_S = 2 * 365 * 86_400
_GLOBAL_MEAN = 2.9
_BIAS_STD = 0.3
_AFFINITY_SCALE = 0.8
_NOISE_STD = 0.6
_EXTRA_GENRES_PER_ITEM = 1.0
_SEEN_BUDGET_BYTES = 1 << 26
_MAX_CHUNK = 16_384


@dataclass(frozen=True)
class SyntheticTruth:
    """The planted parameters, indexed by the internal ids of the generated data.

    The rating of user ``u`` and item ``i`` before noise and rounding is
    :meth:`expected_rating`; the choice of items also used the short-term interest,
    which is not stored.
    """

    user_factors: np.ndarray
    item_factors: np.ndarray
    user_bias: np.ndarray
    item_bias: np.ndarray
    global_mean: float
    affinity_scale: float
    noise_std: float
    item_weights: np.ndarray
    genre_factors: np.ndarray

    def expected_rating(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Noise-free, unrounded, unclipped rating of each (user, item) pair."""
        dot = np.einsum("nk,nk->n", self.user_factors[users], self.item_factors[items])
        return (
            self.global_mean
            + self.user_bias[users]
            + self.item_bias[items]
            + self.affinity_scale * dot
        )


def generate_synthetic(
    n_users: int = DEFAULTS["n_users"],
    n_items: int = DEFAULTS["n_items"],
    *,
    n_factors: int = DEFAULTS["n_factors"],
    mean_activity: float = DEFAULTS["mean_activity"],
    n_genres: int = DEFAULTS["n_genres"],
    popularity_exponent: float = DEFAULTS["popularity_exponent"],
    seed: int | np.random.SeedSequence | np.random.Generator = DEFAULTS["seed"],
    name: str = "synthetic",
) -> tuple[Interactions, SyntheticTruth]:
    """Generate the synthetic dataset and its planted truth (see the module doc).

    Deterministic for an integer (or ``SeedSequence``) ``seed``. Every user has at least
    5 interactions and no (user, item) pair repeats.
    """
    _check_options(n_users, n_items, n_factors, mean_activity, n_genres, popularity_exponent)
    root = np.random.default_rng(seed)
    truth_rng, activity_rng, sequence_rng, rating_rng, time_rng = root.spawn(5)

    planted = _planted(truth_rng, n_users, n_items, n_factors, n_genres, popularity_exponent)
    U, V, bu, bi, weights, G, genres = planted
    activity = _activity(activity_rng, n_users, n_items, mean_activity)

    n = int(activity.sum())
    offsets = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(activity, out=offsets[1:])
    items = np.empty(n, dtype=np.int64)
    new_session = np.empty(n, dtype=bool)

    # Chunks of users with similar activity (sorted, most active first), so each step
    # of the loop in _sequences works on a prefix of the chunk that is still active.
    by_activity = np.argsort(-activity, kind="stable")
    chunk = int(np.clip(_SEEN_BUDGET_BYTES // n_items, 1, _MAX_CHUNK))
    n_chunks = -(-n_users // chunk)
    popular = _PopularitySampler(weights)
    seen = np.zeros((min(chunk, n_users), n_items), dtype=bool)
    U32, V32 = U.astype(np.float32), V.astype(np.float32)
    for c, rng in enumerate(sequence_rng.spawn(n_chunks)):
        users = by_activity[c * chunk : (c + 1) * chunk]
        _sequences(rng, users, activity, offsets, U32, V32, popular, seen, items, new_session)

    row_users = np.repeat(np.arange(n_users, dtype=np.int64), activity)
    ratings = _ratings(rating_rng, row_users, items, U, V, bu, bi)
    start = _T0 + time_rng.integers(0, _START_SPAN_S, size=n_users)
    elapsed = np.cumsum(_gaps(time_rng, new_session, offsets))
    timestamps = start[row_users] + elapsed - elapsed[offsets[:-1]][row_users]

    codes, first_seen = pd.factorize(items, sort=False)
    item_ids = np.asarray(first_seen, dtype=np.int64)
    data = Interactions(
        name=name,
        users=row_users,
        items=codes.astype(np.int64, copy=False),
        ratings=ratings,
        timestamps=timestamps,
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=item_ids,
        item_genres=genres[item_ids],
        genre_names=tuple(f"genre-{g:02d}" for g in range(n_genres)),
        rating_scale=RATING_SCALE,
    )
    truth = SyntheticTruth(
        user_factors=U,
        item_factors=V[item_ids],
        user_bias=bu,
        item_bias=bi[item_ids],
        global_mean=_GLOBAL_MEAN,
        affinity_scale=_AFFINITY_SCALE,
        noise_std=_NOISE_STD,
        item_weights=weights[item_ids],
        genre_factors=G,
    )
    return data, truth


def load_synthetic(**options: Any) -> Interactions:
    """The synthetic dataset alone (``options`` as for :func:`generate_synthetic`)."""
    return generate_synthetic(**options)[0]


def synthetic_truth(**options: Any) -> SyntheticTruth:
    """The planted truth of ``load_synthetic(**options)``, aligned with its ids."""
    return generate_synthetic(**options)[1]


def _check_options(
    n_users: int,
    n_items: int,
    n_factors: int,
    mean_activity: float,
    n_genres: int,
    popularity_exponent: float,
) -> None:
    if n_users < 1:
        raise ConfigError(f"n_users must be at least 1, got {n_users}")
    if n_items < 2 * MIN_ACTIVITY:
        raise ConfigError(
            f"n_items must be at least {2 * MIN_ACTIVITY} so that every user can have "
            f"{MIN_ACTIVITY} distinct items, got {n_items}"
        )
    if n_factors < 1:
        raise ConfigError(f"n_factors must be at least 1, got {n_factors}")
    if not mean_activity > MIN_ACTIVITY:
        raise ConfigError(f"mean_activity must be above {MIN_ACTIVITY}, got {mean_activity}")
    if n_genres < 1:
        raise ConfigError(f"n_genres must be at least 1, got {n_genres}")
    if not popularity_exponent >= 0:
        raise ConfigError(f"popularity_exponent must be >= 0, got {popularity_exponent}")


def _planted(
    rng: np.random.Generator,
    n_users: int,
    n_items: int,
    k: int,
    n_genres: int,
    popularity_exponent: float,
) -> tuple[np.ndarray, ...]:
    sigma = k**-0.25
    U = rng.normal(0.0, sigma, size=(n_users, k))
    V = rng.normal(0.0, sigma, size=(n_items, k))
    bu = rng.normal(0.0, _BIAS_STD, size=n_users)
    bi = rng.normal(0.0, _BIAS_STD, size=n_items)
    ranks = rng.permutation(n_items) + 1.0
    weights = ranks**-popularity_exponent
    weights /= weights.sum()
    G = rng.normal(size=(n_genres, k))
    cos = (V / np.linalg.norm(V, axis=1, keepdims=True)) @ (
        G / np.linalg.norm(G, axis=1, keepdims=True)
    ).T
    genres = np.zeros((n_items, n_genres), dtype=bool)
    genres[np.arange(n_items), np.argmax(cos, axis=1)] = True
    if n_genres > 1:
        genres |= cos > np.quantile(cos, 1.0 - _EXTRA_GENRES_PER_ITEM / n_genres)
    return U, V, bu, bi, weights, G, genres


def _activity(
    rng: np.random.Generator, n_users: int, n_items: int, mean_activity: float
) -> np.ndarray:
    scale = (mean_activity - MIN_ACTIVITY) * (_ACTIVITY_TAIL - 1.0)
    extra = np.floor(rng.pareto(_ACTIVITY_TAIL, size=n_users) * scale + 0.5)
    cap = n_items // 2
    return np.minimum(MIN_ACTIVITY + extra, cap).astype(np.int64)


def _sequences(
    rng: np.random.Generator,
    users: np.ndarray,
    activity: np.ndarray,
    offsets: np.ndarray,
    U32: np.ndarray,
    V32: np.ndarray,
    popular: _PopularitySampler,
    seen: np.ndarray,
    out_items: np.ndarray,
    out_new_session: np.ndarray,
) -> None:
    """Item sequences of ``users`` (sorted by activity, most active first), and whether
    each step starts a new session."""
    b = len(users)
    k = U32.shape[1]
    act = activity[users]
    # n_active[t]: users with more than t interactions (a prefix, as act is descending).
    n_active = np.searchsorted(-act, -np.arange(int(act[0])), side="left")
    base = offsets[users]
    long_term = U32[users]
    drift = np.float32(_DRIFT_STD * k**-0.25)
    z = drift * rng.standard_normal(size=(b, k), dtype=np.float32)
    for t in range(int(act[0])):
        m = int(n_active[t])
        rows = np.arange(m)
        zm = z[:m]
        if t == 0:
            new_session = np.ones(m, dtype=bool)
        else:
            new_session = rng.random(m) < _NEW_SESSION_P
            zm[new_session] *= np.float32(_SESSION_FADE)
            zm += drift * rng.standard_normal(size=(m, k), dtype=np.float32)
        query = long_term[:m] + np.float32(_SHORT_TERM_WEIGHT) * zm
        cand = popular(rng, (m, _CANDIDATES))
        # np.take: a much faster gather than fancy indexing for rows of a 2-D array.
        score = np.matmul(np.take(V32, cand, axis=0), query[:, :, None])[:, :, 0]
        score *= np.float32(_CHOICE_SHARPNESS)
        # Gumbel-max: adding -log(Exp(1)) noise and taking the argmax samples the softmax.
        noise = rng.standard_exponential(size=(m, _CANDIDATES), dtype=np.float32)
        np.maximum(noise, np.float32(1e-30), out=noise)
        score -= np.log(noise)
        choice = cand[rows, np.argmax(score, axis=1)]
        # Most winners are new to their user; redo the choice without seen items only
        # where they are not (checking one item per row is much cheaper than sixteen).
        again = np.flatnonzero(seen[rows, choice])
        if len(again):
            sub = score[again]
            sub[seen[again[:, None], cand[again]]] = -np.inf
            best = np.argmax(sub, axis=1)
            choice[again] = cand[again, best]
            stuck = np.isneginf(sub[np.arange(len(again)), best])
            if stuck.any():
                choice[again[stuck]] = _unseen(rng, popular, seen, again[stuck])
        seen[rows, choice] = True
        pos = base[:m] + t
        out_items[pos] = choice
        out_new_session[pos] = new_session
        zm *= np.float32(_SHORT_TERM_PULL)
        zm += np.float32(1.0 - _SHORT_TERM_PULL) * np.take(V32, choice, axis=0)

    # Reset the rows of ``seen`` that this chunk used.
    rep = np.repeat(np.arange(b), act)
    starts = np.repeat(base - np.concatenate(([0], np.cumsum(act)[:-1])), act)
    seen[rep, out_items[starts + np.arange(len(rep))]] = False


def _ratings(
    rng: np.random.Generator,
    users: np.ndarray,
    items: np.ndarray,
    U: np.ndarray,
    V: np.ndarray,
    bu: np.ndarray,
    bi: np.ndarray,
    block: int = 1 << 20,
) -> np.ndarray:
    """Integer star ratings from the long-term factors, biases and noise."""
    out = np.empty(len(users), dtype=np.float64)
    for lo in range(0, len(users), block):
        u, i = users[lo : lo + block], items[lo : lo + block]
        r = _GLOBAL_MEAN + bu[u] + bi[i] + _AFFINITY_SCALE * np.einsum("nk,nk->n", U[u], V[i])
        r += rng.normal(0.0, _NOISE_STD, size=len(u))
        out[lo : lo + block] = np.clip(np.rint(r), *RATING_SCALE)
    return out


def _gaps(rng: np.random.Generator, new_session: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """Seconds since each user's previous interaction (0 for the first)."""
    mean_gap = np.where(new_session, _SESSION_GAP_S, _IN_SESSION_GAP_S)
    gaps = 1 + np.floor(rng.exponential(size=len(new_session)) * mean_gap).astype(np.int64)
    gaps[offsets[:-1]] = 0
    return gaps


class _PopularitySampler:
    """Exact draws from a discrete distribution: a guide table of the CDF finds the
    start of the search, a few vectorized steps finish it (O(1) expected per draw)."""

    def __init__(self, weights: np.ndarray):
        cdf = np.cumsum(weights, dtype=np.float64)
        cdf /= cdf[-1]
        cdf[-1] = 1.0
        self.cdf = cdf
        self.n = len(cdf)
        self.m = 4 * self.n
        # guide[j] = first index whose cdf exceeds j / m
        self.guide = np.searchsorted(cdf, np.arange(self.m) / self.m, side="right")

    def __call__(self, rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
        u = rng.random(size)
        idx = self.guide[(u * self.m).astype(np.int64)]
        behind = np.flatnonzero(self.cdf[idx.ravel()] <= u.ravel())
        flat = idx.reshape(-1)
        while len(behind):
            flat[behind] += 1
            behind = behind[self.cdf[flat[behind]] <= u.ravel()[behind]]
        return np.minimum(idx, self.n - 1)


def _unseen(
    rng: np.random.Generator, popular: _PopularitySampler, seen: np.ndarray, rows: np.ndarray
) -> np.ndarray:
    """One item per row of ``seen`` that the row has not seen (popular first, then
    uniform; a row has seen at most half the items, so this ends quickly)."""
    n_items = seen.shape[1]
    choice = np.empty(len(rows), dtype=np.int64)
    todo = np.arange(len(rows))
    attempt = 0
    while len(todo):
        size = (len(todo), _CANDIDATES)
        cand = popular(rng, size) if attempt < 3 else rng.integers(0, n_items, size)
        fresh = ~seen[rows[todo][:, None], cand]
        found = fresh.any(axis=1)
        first = np.argmax(fresh, axis=1)
        choice[todo[found]] = cand[found, first[found]]
        todo = todo[~found]
        attempt += 1
    return choice
