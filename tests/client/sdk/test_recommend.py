"""On-device recommendation: whole-catalogue scoring, seen items excluded, explanations
that are faithful (removing a named item lowers that recommendation's score by exactly
the stated contribution), cold start, and the interest model."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from pollinate.client.recommend import (
    ColdStartScorer,
    MFScorer,
    profile_of,
    recommend,
    scorer_for,
)
from pollinate.client.store import Event, GlobalModel
from pollinate.shared.catalogue import Catalogue

from .conftest import make_catalogue, make_mf


def _events(spec: Sequence[tuple[str, str, float | None]]) -> list[Event]:
    return [
        Event(i + 1, item, kind, rating, 100.0 + i) for i, (item, kind, rating) in enumerate(spec)
    ]


def _model(task: str = "rating", **params: np.ndarray) -> GlobalModel:
    return GlobalModel(1, {**make_mf(), **params}, make_catalogue(), {"model": "mf", "task": task})


HISTORY = [
    ("item-0", "rating", 5.0), ("item-4", "rating", 5.0), ("item-1", "rating", 4.0),
    ("item-9", "rating", 1.0), ("item-5", "view", None), ("item-2", "dislike", None),
]  # fmt: skip


def _score_without(
    events: list[Event], model: GlobalModel, item: str, target: str, private: Any = None
) -> tuple[float, float]:
    cat = model.catalogue
    j = cat.index(target)
    full = scorer_for(model, cat, profile_of(events, cat), private, min_events=1)
    rest = [e for e in events if e.item != item]
    part = scorer_for(model, cat, profile_of(rest, cat), private, min_events=1)
    assert type(full) is type(part)
    return (
        float(full.scores(profile_of(events, cat))[j]),
        float(part.scores(profile_of(rest, cat))[j]),
    )


@pytest.mark.parametrize("task", ["rating", "ranking"])
@pytest.mark.parametrize("with_private", [False, True])
def test_mf_explanations_are_faithful(task: str, with_private: bool) -> None:
    model = _model(task)
    events = _events(HISTORY)
    private = (
        {"user_factors.weight": np.array([[0.3, -0.2, 0.1, 0.4]], np.float32)}
        if with_private
        else None
    )
    recs = recommend(events, model.catalogue, model, private, k=8, min_events=1)
    named = 0
    for rec in recs:
        assert rec.source == "model"
        for b in rec.because:
            with_it, without = _score_without(events, model, b.item, rec.item, private)
            assert without < with_it
            assert with_it - without == pytest.approx(b.contribution, rel=1e-6, abs=1e-9)
            named += 1
        contributions = [b.contribution for b in rec.because]
        assert contributions == sorted(contributions, reverse=True)
    assert named >= 5


def test_explanations_name_liked_items_only_and_the_planted_one_first() -> None:
    # item i loads on factor i % 4: liking only item-0 and item-1 must explain the
    # items sharing item-0's factor by item-0.
    model = _model("ranking")
    events = _events(
        [("item-0", "like", None), ("item-1", "like", None), ("item-3", "dislike", None)]
    )
    recs = recommend(events, model.catalogue, model, k=10, min_events=1)
    assert all(r.source == "model" for r in recs)
    for rec in recs:
        assert all(b.item in ("item-0", "item-1") for b in rec.because)
        idx = model.catalogue.index(rec.item)
        assert idx is not None
        if idx % 4 == 0 and rec.because:
            assert rec.because[0].item == "item-0"
            assert rec.explanation.startswith("because you liked Title 0")


def test_the_whole_catalogue_is_scored_and_seen_items_are_excluded() -> None:
    model = _model()
    events = _events([*HISTORY, ("not-in-catalogue", "view", None)])
    recs = recommend(events, model.catalogue, model, k=100, min_events=1)
    seen = {item for item, _, _ in HISTORY}
    assert len(recs) == model.catalogue.n_items - len(seen)
    assert not seen & {r.item for r in recs}
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)
    # the scores are the model's: μ + b_j + q_j·p with p the ridge fold-in
    scorer = MFScorer(model.params, model.catalogue, "rating")
    prof = profile_of(events, model.catalogue)
    fold = scorer.fold(prof)
    q, b = model.params["item_factors.weight"], model.params["item_bias.weight"][:, 0]
    j = model.catalogue.index(recs[0].item)
    assert recs[0].score == pytest.approx(float(q[j] @ fold.p + b[j] + 3.0), rel=1e-6)
    # and the fold-in solves the ridge normal equations
    rows = prof.rows
    qh = q[rows].astype(float)
    y = scorer.targets(prof)
    lhs = (qh.T @ qh + scorer.lam * np.eye(4)) @ fold.p
    np.testing.assert_allclose(lhs, qh.T @ y, rtol=1e-8, atol=1e-10)


def test_cold_start_is_popular_spread_over_genres_and_follows_liked_genres() -> None:
    cat = make_catalogue(40)
    recs = recommend([], cat, None, k=8)
    assert all(r.source == "cold-start" and r.because == () for r in recs)
    firsts = [r.genres[0] for r in recs]
    assert max(firsts.count(g) for g in set(firsts)) <= 3  # spread over genres
    top_pop = np.argsort(-cat.pop, kind="stable")[:3]
    assert cat.item_ids[top_pop[0]] == recs[0].item
    # liking two Horror items (genre 3) raises every Horror item by the genre weight and
    # nothing else; with a weight of 1 the top is mostly Horror, and explained
    events = _events([("item-3", "like", None), ("item-7", "like", None)])
    base = ColdStartScorer(cat).scores(profile_of([], cat))
    liked = ColdStartScorer(cat).scores(profile_of(events, cat))
    horror = cat.genres[:, 3] > 0  # type: ignore[index]
    np.testing.assert_allclose((liked - base)[horror], 0.1)
    np.testing.assert_allclose((liked - base)[~horror], 0.0)
    recs = recommend(events, cat, None, k=5, genre_weight=1.0)
    assert sum("Horror" in r.genres for r in recs) >= 4
    for r in recs:
        for b in r.because:
            scorer = ColdStartScorer(cat, genre_weight=1.0)
            j = cat.index(r.item)
            rest = [e for e in events if e.item != b.item]
            drop = (
                scorer.scores(profile_of(events, cat))[j] - scorer.scores(profile_of(rest, cat))[j]
            )
            assert drop == pytest.approx(b.contribution) and drop > 0


def test_interest_model_recommends_and_explains_faithfully() -> None:
    torch = pytest.importorskip("torch")
    from pollinate.shared.models.base import build_model

    cat = make_catalogue(30)
    gen = torch.Generator().manual_seed(0)
    net = build_model("interest", n_users=1, n_items=30, item_genres=cat.genres, dim=8,
                      history_len=5, init_std=0.5, generator=gen)  # fmt: skip
    model = GlobalModel(1, net.global_state(), cat, {"model": "interest", "task": "ranking"})
    events = _events([(f"item-{i}", "like", None) for i in (1, 5, 9, 13)])
    recs = recommend(events, cat, model, k=5, now=200.0, min_events=1)
    assert len(recs) == 5 and all(r.source == "model" for r in recs)
    scorer = scorer_for(model, cat, profile_of(events, cat), now=200.0, min_events=1)
    explained = 0
    for rec in recs:
        j = cat.index(rec.item)
        for b in rec.because:
            rest = [e for e in events if e.item != b.item]
            drop = (
                scorer.scores(profile_of(events, cat))[j] - scorer.scores(profile_of(rest, cat))[j]
            )
            assert drop == pytest.approx(b.contribution, rel=1e-4, abs=1e-6) and drop > 0
            explained += 1
    assert explained >= 1


def test_events_for_unknown_items_count_once_the_catalogue_knows_them() -> None:
    events = _events([("new-film", "like", None)])
    old = make_catalogue(40)
    assert len(profile_of(events, old)) == 0
    ids = [*old.item_ids, "new-film"]
    new = Catalogue(
        item_ids=np.array(ids), popularity=np.r_[old.pop, 1.0],
        genres=np.r_[old.genres, np.eye(1, 4, 3, dtype=np.float32)], genre_names=old.genre_names,
    )  # fmt: skip
    prof = profile_of(events, new)
    assert list(prof.rows) == [40]
    recs = recommend(events, new, None, k=3)
    assert "new-film" not in {r.item for r in recs}
    assert all("Horror" in r.genres for r in recs)


def test_bad_k_is_refused() -> None:
    for k in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            recommend([], make_catalogue(), None, k=k)  # type: ignore[arg-type]


def test_the_model_takes_over_from_content_at_the_measured_threshold() -> None:
    from pollinate.client.recommend import MIN_EVENTS_FOR_MODEL

    model = _model("ranking")
    liked = [(f"item-{i}", "like", None) for i in range(MIN_EVENTS_FOR_MODEL)]
    below = recommend(_events(liked[:-1]), model.catalogue, model, k=3)
    at = recommend(_events(liked), model.catalogue, model, k=3)
    assert {r.source for r in below} == {"cold-start"}
    assert {r.source for r in at} == {"model"}
    # a popularity weight does not change the explanations (it does not depend on history)
    events = _events(HISTORY)
    plain = recommend(events, model.catalogue, model, k=40, min_events=1)
    popular = recommend(events, model.catalogue, model, k=40, min_events=1, pop_weight=2.0)
    by_item = {r.item: r.because for r in plain}
    assert all(r.because == by_item[r.item] for r in popular)
    assert [r.item for r in plain] != [r.item for r in popular]
