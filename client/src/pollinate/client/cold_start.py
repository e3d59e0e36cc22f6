"""Recommendations without a personal model: item content (genres) and popularity.

A brand-new device has no events and maybe no trained model yet; a device with one to
three events has too little for a user vector. Both get

    score(i) = log(1 + popularity_i) / log(1 + max popularity)
               + weight * mean over liked items h of cos(genres_h, genres_i)
               - weight * mean over disliked items h of cos(genres_h, genres_i)

With no events this is popularity alone, spread over genres (:func:`diversify`: no more
than ``per_genre`` of the top items share a first genre), so the first screen is not
ten dramas. Popularity counts and genres come from the catalogue (the server's public
statistics); nothing here learns from other users.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollinate.shared.catalogue import Catalogue

#: Weight of the genre affinity against popularity: on ML-100K users with 1 to 3 known
#: interactions, 0.1 is within noise of most-popular and larger weights are worse
#: (simulations/benchmarks/sdk_cold_start.py, docs/sdk.md).
GENRE_WEIGHT = 0.1


def popularity_scores(catalogue: Catalogue) -> np.ndarray:
    pop = np.log1p(catalogue.pop)
    top = pop.max()
    return pop / top if top > 0 else pop


def _unit_genres(catalogue: Catalogue) -> np.ndarray | None:
    if catalogue.genres is None or catalogue.genres.shape[1] == 0:
        return None
    g = catalogue.genres.astype(np.float64)
    norm = np.linalg.norm(g, axis=1, keepdims=True)
    return np.divide(g, norm, out=np.zeros_like(g), where=norm > 0)


def content_scores(
    catalogue: Catalogue,
    history: Sequence[int] | np.ndarray,
    signs: Sequence[float] | np.ndarray,
    weight: float = GENRE_WEIGHT,
) -> np.ndarray:
    """The cold-start score of every item given the user's items ``history`` (catalogue
    rows) and their ``signs`` (+1 liked, -1 disliked, 0 neutral)."""
    score = popularity_scores(catalogue)
    unit = _unit_genres(catalogue)
    if unit is None or len(history) == 0:
        return score
    h = np.asarray(history, dtype=np.int64)
    w = np.asarray(signs, dtype=np.float64)
    profile = (w[:, None] * unit[h]).sum(0) / len(h)
    return score + weight * (unit @ profile)


def diversify(order: np.ndarray, catalogue: Catalogue, k: int, per_genre: int = 3) -> np.ndarray:
    """The first ``k`` of ``order`` with at most ``per_genre`` items per first genre (the
    rest fill in, in order, when there are not enough genres)."""
    if catalogue.genres is None or catalogue.genres.shape[1] == 0:
        return order[:k]
    first = np.where(catalogue.genres.any(1), catalogue.genres.argmax(1), -1)
    picked: list[int] = []
    skipped: list[int] = []
    counts: dict[int, int] = {}
    for i in order:
        g = int(first[i])
        if counts.get(g, 0) < per_genre:
            picked.append(int(i))
            counts[g] = counts.get(g, 0) + 1
        else:
            skipped.append(int(i))
        if len(picked) == k:
            break
    picked.extend(skipped[: k - len(picked)])
    return np.asarray(picked, dtype=np.int64)
