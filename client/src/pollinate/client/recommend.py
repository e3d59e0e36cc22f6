"""On-device recommendation: score the whole catalogue, drop what the user has seen,
explain each pick.

Which scorer runs:

* a global model and at least :data:`MIN_EVENTS_FOR_MODEL` known events: the model.
  ``mf``: ``b_j + q_j . p`` with ``p`` the ridge fold-in of the device's events against
  the received item factors, shrunk towards the device's trained private vector when it
  has one (:mod:`pollinate.client.explain`); ``interest``: the model's own user side
  (private vector + encoder over the recent history);
* otherwise (a new device, no model yet, or too few events): item content and
  popularity (:mod:`pollinate.client.cold_start`).

Every recommendation names the history items that raise its score the most
(leave-one-out contributions, :mod:`pollinate.client.explain`). Only numpy runs for
``mf`` and cold start; torch is imported for the interest model only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pollinate.client.cold_start import (
    GENRE_WEIGHT,
    content_scores,
    diversify,
    popularity_scores,
)
from pollinate.client.events import known_events
from pollinate.client.explain import fold_in, mf_contributions, rescored_contributions
from pollinate.client.store import Event, GlobalModel
from pollinate.shared.catalogue import Catalogue
from pollinate.shared.errors import ConfigError

#: Fewer known liked events than this and the device uses content + popularity: on
#: ML-100K users with 1 to 3 known interactions, no model variant beat most-popular and
#: content + popularity (weight 0.1) came closest (simulations/benchmarks/sdk_cold_start.py;
#: docs/sdk.md).
MIN_EVENTS_FOR_MODEL = 4
#: Ridge weight of the MF fold-in, relative to the mean squared norm of the item factors.
RIDGE = 1.0
#: Weight of the catalogue's popularity (log-scaled to [0, 1]) added to the MF score; it
#: does not depend on the user's history, so explanations stay exact (docs/sdk.md).
POP_WEIGHT = 0.0
#: How many history items an explanation names at most.
MAX_BECAUSE = 3


@dataclass(frozen=True)
class Because:
    """A history item that raises a recommendation's score by ``contribution``."""

    item: str
    title: str
    contribution: float


@dataclass(frozen=True)
class Recommendation:
    item: str
    title: str
    score: float
    #: "model" (the global model with the device's data) or "cold-start".
    source: str
    genres: tuple[str, ...] = ()
    because: tuple[Because, ...] = field(default_factory=tuple)

    @property
    def explanation(self) -> str:
        if self.because:
            return "because you liked " + ", ".join(b.title for b in self.because)
        return "popular" if self.source == "cold-start" else "recommended for you"

    def to_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "title": self.title,
            "score": self.score,
            "source": self.source,
            "genres": list(self.genres),
            "because": [b.__dict__ for b in self.because],
            "explanation": self.explanation,
        }


@dataclass(frozen=True)
class Profile:
    """The user's known items (catalogue rows, one entry per item, in the order of their
    last event) and what each says: ``target`` for the fold-in, ``sign`` +1/-1/0."""

    rows: np.ndarray
    rating: np.ndarray  # NaN where unrated
    sign: np.ndarray
    timestamp: np.ndarray
    seen: np.ndarray  # every known item the user touched (to exclude)

    def __len__(self) -> int:
        return len(self.rows)

    def without(self, h: int) -> Profile:
        keep = np.arange(len(self.rows)) != h
        return Profile(
            self.rows[keep], self.rating[keep], self.sign[keep], self.timestamp[keep], self.seen
        )


def profile_of(events: Sequence[Event], catalogue: Catalogue) -> Profile:
    """One entry per known item: its last rating (if any) and its last kind's sign."""
    last: dict[int, tuple[Event, float | None]] = {}
    for e, i in known_events(events, catalogue):  # time order
        rating = e.rating if e.rating is not None else (last[i][1] if i in last else None)
        last[i] = (e, rating)
    items = sorted(last, key=lambda i: (last[i][0].timestamp, last[i][0].id))
    scale = catalogue.rating_scale
    sign = []
    for i in items:
        e, r = last[i]
        if not e.positive:
            sign.append(-1.0)
        elif r is not None and scale is not None:
            mid = (scale[0] + scale[1]) / 2
            sign.append(1.0 if r > mid else (-1.0 if r < mid else 0.0))
        else:
            sign.append(1.0)
    return Profile(
        rows=np.asarray(items, dtype=np.int64),
        rating=np.asarray([np.nan if last[i][1] is None else last[i][1] for i in items]),
        sign=np.asarray(sign),
        timestamp=np.asarray([last[i][0].timestamp for i in items], dtype=np.float64),
        seen=np.asarray(items, dtype=np.int64),
    )


# ------------------------------------------------------------------ scorers
class _Scorer:
    source = "model"

    def scores(self, profile: Profile) -> np.ndarray:
        raise NotImplementedError

    def contributions(self, profile: Profile, items: np.ndarray) -> np.ndarray:
        full = self.scores(profile)[items]
        return rescored_contributions(
            lambda h: self.scores(profile.without(h))[items], full, len(profile)
        )


class ColdStartScorer(_Scorer):
    source = "cold-start"

    def __init__(self, catalogue: Catalogue, genre_weight: float = GENRE_WEIGHT) -> None:
        self.catalogue = catalogue
        self.genre_weight = genre_weight

    def scores(self, profile: Profile) -> np.ndarray:
        return content_scores(self.catalogue, profile.rows, profile.sign, self.genre_weight)


def _mf_item_side(
    params: Mapping[str, np.ndarray], cache: dict[str, Any], ridge: float
) -> tuple[np.ndarray, np.ndarray, float]:
    """Item factors and biases in float64 and the ridge weight, prepared once per model
    (``cache``: the model's own cache) rather than on every call."""
    if "mf" not in cache:
        q = np.asarray(params["item_factors.weight"], dtype=np.float64)
        b = np.asarray(params["item_bias.weight"], dtype=np.float64).reshape(-1)
        cache["mf"] = (q, b, float(np.einsum("ij,ij->", q, q)) / max(1, len(q)))
    q, b, mean_sq = cache["mf"]
    return q, b, ridge * mean_sq + 1e-9


class MFScorer(_Scorer):
    """``b_j + q_j . p`` (+ ``μ``); ``p`` folded in from the profile (module doc)."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        catalogue: Catalogue,
        task: str,
        private: Mapping[str, np.ndarray] | None = None,
        ridge: float = RIDGE,
        cache: dict[str, Any] | None = None,
        pop_weight: float = POP_WEIGHT,
    ) -> None:
        self.q, self.b, self.lam = _mf_item_side(params, {} if cache is None else cache, ridge)
        self._last: tuple[Profile, Any] | None = None
        mu = params.get("global_bias.weight")
        self.mu = float(np.asarray(mu).reshape(-1)[0]) if mu is not None else 0.0
        if catalogue.rating_scale is not None and mu is None:
            self.mu = sum(catalogue.rating_scale) / 2
        self.base = self.b + self.mu
        if pop_weight:
            self.base = self.base + pop_weight * popularity_scores(catalogue)
        if self.q.shape[0] != catalogue.n_items:
            raise ConfigError(
                f"the model has {self.q.shape[0]} items but the catalogue {catalogue.n_items}"
            )
        self.catalogue = catalogue
        self.task = task
        self.prior = None
        if private is not None and "user_factors.weight" in private:
            self.prior = np.asarray(private["user_factors.weight"], dtype=np.float64)[0]

    def targets(self, profile: Profile) -> np.ndarray:
        """What each history item says about the user, on the model's scale."""
        r = profile.rating
        scale = self.catalogue.rating_scale
        rated = ~np.isnan(r)
        if self.task == "rating":
            assert scale is not None
            lo, hi = scale
            implied = np.where(profile.sign < 0, lo, lo + 0.75 * (hi - lo))
            value = np.where(rated, r, implied)
            return value - self.mu - self.b[profile.rows]
        y = np.where(profile.sign < 0, -1.0, 1.0)
        if scale is not None:
            lo, hi = scale
            y = np.where(rated, (np.nan_to_num(r) - lo) / (hi - lo) * 2 - 1, y)
        return y

    def fold(self, profile: Profile) -> Any:
        if self._last is not None and self._last[0] is profile:
            return self._last[1]
        fold = fold_in(self.q[profile.rows], self.targets(profile), self.lam, self.prior)
        self._last = (profile, fold)
        return fold

    def scores(self, profile: Profile) -> np.ndarray:
        p = self.fold(profile).p if len(profile) else self._prior()
        return self.q @ p + self.base

    def _prior(self) -> np.ndarray:
        return self.prior if self.prior is not None else np.zeros(self.q.shape[1])

    def contributions(self, profile: Profile, items: np.ndarray) -> np.ndarray:
        return mf_contributions(self.fold(profile), self.q[items])


class InterestScorer(_Scorer):
    """The interest model's own user side (torch, imported here only)."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        catalogue: Catalogue,
        private: Mapping[str, np.ndarray] | None,
        now: float | None = None,
    ) -> None:
        import torch

        from pollinate.shared.models.base import build_model

        dim = int(params["item_emb.weight"].shape[1])
        history_len = int(params["pos_emb.weight"].shape[0]) - 1
        n_layers = len({k.split(".")[1] for k in params if k.startswith("blocks.")})
        self.model = build_model(
            "interest",
            n_users=1,
            n_items=catalogue.n_items,
            item_genres=catalogue.genres,
            dim=dim,
            history_len=history_len,
            n_layers=max(1, n_layers),
        )
        self.model.load_global_state(dict(params))
        named = dict(self.model.named_parameters())
        with torch.no_grad():
            for k, v in (private or {}).items():
                if k in named:
                    named[k].copy_(torch.as_tensor(v))
        self.model.eval()
        self.history_len = history_len
        self.now = now

    def _batches(self, profiles: list[Profile]) -> dict[str, Any]:
        import time

        import torch

        from pollinate.shared.training.examples import gap_buckets

        L, pad = self.history_len, self.model.n_items
        hist = np.full((len(profiles), L), pad, dtype=np.int64)
        gap = np.zeros((len(profiles), L), dtype=np.int64)
        now = self.now if self.now is not None else time.time()
        for b, prof in enumerate(profiles):
            keep = prof.sign > 0
            rows, ts = prof.rows[keep][-L:], prof.timestamp[keep][-L:]
            if len(rows):
                hist[b, L - len(rows) :] = rows
                gap[b, L - len(rows) :] = gap_buckets(now - ts)
        return {
            "user": torch.zeros(len(profiles), dtype=torch.long),
            "hist": torch.as_tensor(hist),
            "hist_gap": torch.as_tensor(gap),
        }

    def scores(self, profile: Profile) -> np.ndarray:
        import torch

        with torch.no_grad():
            out = self.model.score_items(self._batches([profile]))  # type: ignore[operator]
        return np.asarray(out[0].double().numpy())

    def contributions(self, profile: Profile, items: np.ndarray) -> np.ndarray:
        import torch

        profiles = [profile] + [profile.without(h) for h in range(len(profile))]
        idx = torch.as_tensor(items)
        with torch.no_grad():
            out = self.model.score_items(self._batches(profiles), idx)  # type: ignore[operator]
        s = out.double().numpy()
        return (s[0][None, :] - s[1:]).T


def scorer_for(
    model: GlobalModel | None,
    catalogue: Catalogue,
    profile: Profile,
    private: Mapping[str, np.ndarray] | None = None,
    now: float | None = None,
    *,
    ridge: float = RIDGE,
    genre_weight: float = GENRE_WEIGHT,
    min_events: int = MIN_EVENTS_FOR_MODEL,
    pop_weight: float = POP_WEIGHT,
) -> _Scorer:
    """The scorer the device uses (see the module doc)."""
    if model is None or not model.params or int((profile.sign > 0).sum()) < min_events:
        return ColdStartScorer(catalogue, genre_weight)
    name = model.model_config.get("model")
    if name is None:
        name = "mf" if "item_factors.weight" in model.params else "interest"
    task = str(model.model_config.get("task", "ranking"))
    if name == "mf":
        return MFScorer(model.params, catalogue, task, private, ridge, model.cache, pop_weight)
    if name == "interest":
        return InterestScorer(model.params, catalogue, private, now)
    raise ConfigError(f"no on-device recommender for model {name!r}")


def recommend(
    events: Sequence[Event],
    catalogue: Catalogue,
    model: GlobalModel | None = None,
    private: Mapping[str, np.ndarray] | None = None,
    *,
    k: int = 10,
    explain: bool = True,
    now: float | None = None,
    ridge: float = RIDGE,
    genre_weight: float = GENRE_WEIGHT,
    min_events: int = MIN_EVENTS_FOR_MODEL,
    pop_weight: float = POP_WEIGHT,
) -> list[Recommendation]:
    """The top ``k`` items the user has not seen, best first, each with its explanation.
    ``ridge``, ``genre_weight`` and ``min_events``: the module's measured defaults."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}")
    profile = profile_of(events, catalogue)
    scorer = scorer_for(
        model, catalogue, profile, private, now,
        ridge=ridge, genre_weight=genre_weight, min_events=min_events, pop_weight=pop_weight,
    )  # fmt: skip
    scores = scorer.scores(profile).astype(np.float64)
    scores[profile.seen] = -np.inf
    n_left = int(np.isfinite(scores).sum())
    k = min(k, n_left)
    if k == 0:
        return []
    if isinstance(scorer, ColdStartScorer) and len(profile) == 0:
        order = np.argsort(-scores, kind="stable")[: 10 * k]
        top = diversify(order, catalogue, k)
    else:
        part = np.argpartition(-scores, k - 1)[:k]
        top = part[np.argsort(-scores[part], kind="stable")]
    because: list[tuple[Because, ...]] = [() for _ in top]
    if explain and len(profile):
        contrib = scorer.contributions(profile, top)  # (k, H)
        liked = profile.sign > 0
        for j in range(len(top)):
            order = np.argsort(-contrib[j], kind="stable")
            picks = [h for h in order if contrib[j, h] > 0 and liked[h]][:MAX_BECAUSE]
            because[j] = tuple(
                Because(
                    str(catalogue.item_ids[profile.rows[h]]),
                    catalogue.title(int(profile.rows[h])),
                    float(contrib[j, h]),
                )
                for h in picks
            )
    return [
        Recommendation(
            item=str(catalogue.item_ids[i]),
            title=catalogue.title(int(i)),
            score=float(scores[i]),
            source=scorer.source,
            genres=tuple(catalogue.genres_of(int(i))),
            because=because[j],
        )
        for j, i in enumerate(top)
    ]
