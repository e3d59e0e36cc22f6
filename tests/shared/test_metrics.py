"""Tests of pollinate.shared.metrics against hand-computed examples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pollinate.shared import metrics
from pollinate.shared.metrics import (
    RATING_KEYS,
    MetricError,
    RankingEvaluator,
    add_sums,
    exclusion_mask,
    ranking_metrics_from_sums,
    rating_metrics,
    rating_sums,
)

L3 = math.log2(3)  # NDCG of a single hit at rank 2 is 1 / log2(3)

# Three users, six items. Rankings (item: score), best first:
#   u0: 0(.9) 1(.8) 2(.7) 3(.6) 4(.5) 5(.4)   target 1 -> rank 2
#   u1: 4(.6) 3(.5) 1(.4) 5(.2) 2(.1) 0(.0)   target 0 -> rank 6
#   u2: 1(.9) 4(.8) 0(.3) 3(.2) 2(.1) 5(.0)   target 1 -> rank 1
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],
        [0.0, 0.4, 0.1, 0.5, 0.6, 0.2],
        [0.3, 0.9, 0.1, 0.2, 0.8, 0.0],
    ],
    dtype=np.float32,
)
TARGETS = np.array([1, 0, 1])
# (pop + 1) / (7 + 1) = 4/8, 2/8, 1/8, 8/8, 4/8, 2/8 -> self-information 1, 2, 3, 0, 1, 2 bits
POPULARITY = np.array([3, 1, 0, 7, 3, 1])
SELF_INFO = np.array([1.0, 2.0, 3.0, 0.0, 1.0, 2.0])
# unit genre vectors: 0=[1,0] 1=[0,1] 2=[1,1]/√2 3=[0,0] (similarity 0 with all) 4=[1,0] 5=[0,1]
GENRES = np.array([[1, 0], [0, 1], [1, 1], [0, 0], [1, 0], [0, 1]])


def full_evaluator(ks: tuple[int, ...] = (1, 3)) -> RankingEvaluator:
    return RankingEvaluator(
        6, ks, item_popularity=POPULARITY, n_popularity_users=7, item_genres=GENRES
    )


# --------------------------------------------------------------------------- ratings


def test_rating_sums_and_metrics_hand_computed() -> None:
    # errors: -1, 0, +2 -> se = 1 + 0 + 4 = 5, ae = 1 + 0 + 2 = 3
    sums = rating_sums(np.array([3.0, 4.0, 5.0]), torch.tensor([4.0, 4.0, 3.0]))
    assert sums == {"se_sum": 5.0, "ae_sum": 3.0, "count": 3.0}
    assert tuple(sums) == RATING_KEYS
    out = rating_metrics(sums)
    assert out["rmse"] == pytest.approx(math.sqrt(5 / 3))
    assert out["mae"] == pytest.approx(1.0)


def test_rating_sums_add_up_like_one_batch() -> None:
    a = rating_sums(torch.tensor([[3.0], [4.0]]), torch.tensor([4.0, 4.0]))  # (B,1) vs (B,)
    b = rating_sums(np.array([5.0]), np.array([3.0]))
    total = add_sums(a, b)
    assert total == {"se_sum": 5.0, "ae_sum": 3.0, "count": 3.0}


def test_rating_errors() -> None:
    empty = rating_sums(np.zeros(0), np.zeros(0))
    assert empty["count"] == 0.0
    with pytest.raises(MetricError, match="nothing to average"):
        rating_metrics(empty)
    with pytest.raises(MetricError, match="shape"):
        rating_sums(np.zeros(3), np.zeros(4))
    with pytest.raises(MetricError, match="NaN"):
        rating_sums(np.array([np.nan]), np.array([1.0]))
    with pytest.raises(MetricError, match="lack"):
        rating_metrics({"se_sum": 1.0, "count": 1.0})


# --------------------------------------------------------------------------- accuracy


def test_single_target_hand_computed() -> None:
    ev = RankingEvaluator(6, (1, 3))
    ev.add(SCORES, TARGETS)
    out = ev.result()
    # ranks 2, 6, 1
    assert out["hr@1"] == pytest.approx(1 / 3)  # only u2
    assert out["hr@3"] == pytest.approx(2 / 3)  # u0 and u2
    assert out["recall@3"] == pytest.approx(out["hr@3"])  # one relevant item: recall == hr
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["ndcg@3"] == pytest.approx((1 / L3 + 0 + 1) / 3)
    assert out["mrr@1"] == pytest.approx(1 / 3)
    assert out["mrr@3"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert "novelty@3" not in out and "diversity@3" not in out


def test_exclusion_skips_top_item() -> None:
    # item 0 has the highest score but is excluded: target 2 (0.8) moves from rank 2 to 1
    scores = torch.tensor([[0.9, 0.5, 0.8, 0.1]])
    ev = RankingEvaluator(4, (1,))
    ev.add(scores, torch.tensor([2]), exclude=torch.tensor([[True, False, False, False]]))
    out = ev.result()
    assert out["hr@1"] == 1.0 and out["ndcg@1"] == 1.0
    assert out["coverage@1"] == pytest.approx(1 / 4)  # the list is [2], never item 0
    # without the exclusion it is a miss at K=1
    ev2 = RankingEvaluator(4, (1, 2))
    ev2.add(scores, torch.tensor([2]))
    assert ev2.result()["hr@1"] == 0.0
    assert ev2.result()["ndcg@2"] == pytest.approx(1 / L3)


def test_excluded_target_is_a_miss() -> None:
    ev = RankingEvaluator(3, (3,))
    ev.add(
        torch.tensor([[0.9, 0.1, 0.2]]),
        torch.tensor([0]),
        exclude=exclusion_mask(1, 3, np.array([0]), np.array([0])),
    )
    assert ev.result()["hr@3"] == 0.0


def test_short_list_when_most_items_excluded() -> None:
    # K=3 but only items 1 and 3 remain: the list is [3, 1], never an excluded item
    ev = RankingEvaluator(4, (3,), item_popularity=np.array([0, 1, 0, 3]), n_popularity_users=3)
    exclude = torch.tensor([[True, False, True, False]])
    ev.add(torch.tensor([[5.0, 1.0, 9.0, 2.0]]), torch.tensor([1]), exclude)
    out = ev.result()
    assert out["hr@3"] == 1.0 and out["ndcg@3"] == pytest.approx(1 / L3)  # rank 2
    assert out["coverage@3"] == pytest.approx(2 / 4)
    # self-info: item 3 -log2(4/4) = 0, item 1 -log2(2/4) = 1 -> mean over 2 items 0.5
    assert out["novelty@3"] == pytest.approx(0.5)


def test_constant_scores_are_not_perfect() -> None:
    ev = RankingEvaluator(6, (1, 3, 6))
    ev.add(torch.zeros(4, 6), torch.tensor([0, 1, 2, 5]))
    out = ev.result()
    # pessimistic: every target is ranked after its 5 tied items -> rank 6
    assert out["hr@1"] == 0.0 and out["hr@3"] == 0.0
    assert out["hr@6"] == 1.0
    assert out["mrr@6"] == pytest.approx(1 / 6)
    assert out["ndcg@6"] == pytest.approx(1 / math.log2(7))
    # the top-K list breaks ties by lower item index: [0], [0, 1, 2]
    assert out["coverage@1"] == pytest.approx(1 / 6)
    assert out["coverage@3"] == pytest.approx(3 / 6)


def test_partial_tie_rank_is_pessimistic() -> None:
    # target 2 ties with items 0 and 3 at 0.5, item 1 is higher:
    # rank = 1 + #greater(1) + #tied others(2) = 4
    scores = torch.tensor([[0.5, 0.9, 0.5, 0.5, 0.1, 0.0]])
    ev = RankingEvaluator(6, (3, 4))
    ev.add(scores, torch.tensor([2]))
    out = ev.result()
    assert out["hr@3"] == 0.0
    assert out["mrr@4"] == pytest.approx(1 / 4)
    # -0.0 and 0.0 are the same score: rank = 2 (pessimistic), not 1
    ev0 = RankingEvaluator(2, (1, 2))
    ev0.add(torch.tensor([[-0.0, 0.0]]), torch.tensor([1]))
    assert ev0.result()["mrr@2"] == pytest.approx(1 / 2)


def test_multi_target_recall_ndcg() -> None:
    # ranking 0 1 2 3 4 5, relevant {1, 3, 5}: hits at ranks 2 and 4 (and 6)
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
    rel = torch.tensor([[False, True, False, True, False, True]])
    ev = RankingEvaluator(6, (1, 3, 5))
    ev.add(scores, rel)
    out = ev.result()
    assert out["hr@1"] == 0.0 and out["hr@3"] == 1.0
    assert out["recall@3"] == pytest.approx(1 / 3)
    assert out["recall@5"] == pytest.approx(2 / 3)
    assert out["mrr@5"] == pytest.approx(1 / 2)
    # IDCG uses min(|R|, K) hits: K=3 -> 3 hits: 1 + 1/log2(3) + 1/log2(4)
    idcg3 = 1 + 1 / L3 + 1 / 2
    assert out["ndcg@3"] == pytest.approx((1 / L3) / idcg3)
    assert out["ndcg@5"] == pytest.approx((1 / L3 + 1 / math.log2(5)) / idcg3)


def test_multi_target_ties_and_exclusion() -> None:
    # two relevant items tied at the top with nothing else tied: ranks 1 and 2 -> perfect
    ev = RankingEvaluator(4, (2,))
    ev.add(torch.tensor([[0.9, 0.9, 0.1, 0.0]]), torch.tensor([[True, True, False, False]]))
    assert ev.result()["ndcg@2"] == pytest.approx(1.0)
    # constant scores: the 2 relevant items come after the 4 non-relevant ones: ranks 5, 6
    ev = RankingEvaluator(6, (4, 5))
    ev.add(torch.zeros(1, 6), torch.tensor([[True, True, False, False, False, False]]))
    out = ev.result()
    assert out["hr@4"] == 0.0
    assert out["recall@5"] == pytest.approx(1 / 2)
    # an excluded relevant item is a miss but counts in |R|
    ev = RankingEvaluator(4, (2,))
    exclude = torch.tensor([[True, False, False, False]])
    ev.add(
        torch.tensor([[0.9, 0.8, 0.1, 0.0]]), torch.tensor([[True, True, False, False]]), exclude
    )
    out = ev.result()
    assert out["recall@2"] == pytest.approx(1 / 2)  # item 1 at rank 1, item 0 excluded
    assert out["ndcg@2"] == pytest.approx(1 / (1 + 1 / L3))


def test_single_target_equals_one_hot_mask() -> None:
    gen = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 5, (40, 30), generator=gen).float()  # many ties
    targets = torch.randint(0, 30, (40,), generator=gen)
    exclude = torch.rand(40, 30, generator=gen) < 0.3
    one_hot = torch.zeros(40, 30, dtype=torch.bool)
    one_hot[torch.arange(40), targets] = True
    a, b = RankingEvaluator(30, (1, 5, 10)), RankingEvaluator(30, (1, 5, 10))
    a.add(scores, targets, exclude)
    b.add(scores, one_hot, exclude)
    assert a.result() == pytest.approx(b.result())


# --------------------------------------------------------------------------- beyond accuracy


def test_coverage_novelty_diversity_hand_computed() -> None:
    ev = full_evaluator()
    ev.add(SCORES, TARGETS)
    out = ev.result()
    # top-1 lists {0}, {4}, {1}; top-3 lists {0,1,2}, {4,3,1}, {1,4,0}
    assert out["coverage@1"] == pytest.approx(3 / 6)
    assert out["coverage@3"] == pytest.approx(5 / 6)  # item 5 never recommended
    # novelty@1 = (1 + 1 + 2) / 3; novelty@3 = ((1+2+3)/3 + (1+0+2)/3 + (2+1+1)/3) / 3
    assert out["novelty@1"] == pytest.approx(4 / 3)
    assert out["novelty@3"] == pytest.approx((2 + 1 + 4 / 3) / 3)
    # diversity@1: a one-item list has diversity 0
    # u0 {0,1,2}: pairs 1-0, 1-1/√2, 1-1/√2 -> (3-√2)/3
    # u1 {4,3,1}: item 3 has no genres -> 1, 1; (4,1) -> 1 -> 1
    # u2 {1,4,0}: (1,4) 1, (1,0) 1, (4,0) 0 -> 2/3
    assert out["diversity@1"] == 0.0
    assert out["diversity@3"] == pytest.approx(((3 - math.sqrt(2)) / 3 + 1 + 2 / 3) / 3)
    np.testing.assert_allclose(ev._self_info.numpy(), SELF_INFO)  # type: ignore[union-attr]


def test_novelty_default_normalizer() -> None:
    # n_popularity_users defaults to sum(pop) = 3: self-info = -log2((pop+1)/4)
    ev = RankingEvaluator(2, (1,), item_popularity=np.array([3, 0]))
    ev.add(torch.tensor([[0.0, 1.0]]), torch.tensor([0]))
    assert ev.result()["novelty@1"] == pytest.approx(2.0)  # item 1: -log2(1/4)


# --------------------------------------------------------------------------- aggregation


def _random_batch(seed: int, b: int = 37, n: int = 25):
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, n, generator=gen)
    scores[:, :3] = 0.5  # some ties
    targets = torch.randint(0, n, (b,), generator=gen)
    exclude = torch.rand(b, n, generator=gen) < 0.2
    exclude[torch.arange(b), targets] = False
    return scores, targets, exclude


def _evaluator(n: int = 25) -> RankingEvaluator:
    gen = np.random.default_rng(0)
    return RankingEvaluator(
        n,
        (5, 10),
        item_popularity=gen.integers(0, 50, n),
        n_popularity_users=60,
        item_genres=gen.integers(0, 2, (n, 4)),
    )


def test_batching_invariance(monkeypatch: pytest.MonkeyPatch) -> None:
    scores, targets, exclude = _random_batch(1)
    one = _evaluator()
    one.add(scores, targets, exclude)
    two = _evaluator()
    two.add(scores[:20], targets[:20], exclude[:20])
    two.add(scores[20:].numpy(), targets[20:].numpy(), exclude[20:].numpy())
    assert two.sums() == pytest.approx(one.sums())
    assert two.result() == pytest.approx(one.result())
    # internal row blocks of 2 rows give the same
    monkeypatch.setattr(metrics, "_CHUNK_ELEMS", 50)
    blocks = _evaluator()
    blocks.add(scores, targets, exclude)
    assert blocks.result() == pytest.approx(one.result())


def test_sums_finalize_equals_result_and_federated_add() -> None:
    scores, targets, exclude = _random_batch(2)
    whole = _evaluator()
    whole.add(scores, targets, exclude)
    result = whole.result()
    finalized = ranking_metrics_from_sums(whole.sums())
    assert not any(k.startswith("coverage") for k in finalized)
    assert finalized == pytest.approx({k: v for k, v in result.items() if "coverage" not in k})
    assert set(whole.sums()) >= {
        "hr@10_sum",
        "ndcg@10_sum",
        "recall@5_sum",
        "mrr@5_sum",
        "novelty@10_sum",
        "diversity@10_sum",
        "count",
    }
    # two "devices" each evaluate part of the users; the server adds their sums
    a, b = _evaluator(), _evaluator()
    a.add(scores[:5], targets[:5], exclude[:5])
    b.add(scores[5:], targets[5:], exclude[5:])
    assert ranking_metrics_from_sums(add_sums(a.sums(), b.sums()), (5, 10)) == pytest.approx(
        finalized
    )
    assert RankingEvaluator.merge_sums(a.sums(), b.sums()) == pytest.approx(whole.sums())
    # merging evaluators also merges coverage
    a.merge(b)
    assert a.result() == pytest.approx(result)


# --------------------------------------------------------------------------- errors and helpers


def test_errors() -> None:
    ev = RankingEvaluator(6, (3,))
    with pytest.raises(MetricError, match="nothing to average"):
        ev.result()
    with pytest.raises(MetricError, match="nothing to average"):
        ranking_metrics_from_sums({"hr@3_sum": 0.0, "count": 0.0})
    with pytest.raises(MetricError, match="shape"):
        ev.add(torch.zeros(2, 5), torch.tensor([0, 1]))
    with pytest.raises(MetricError, match="no relevant item"):
        ev.add(torch.zeros(1, 6), torch.zeros(1, 6, dtype=torch.bool))
    with pytest.raises(MetricError, match="NaN"):
        ev.add(torch.full((1, 6), float("nan")), torch.tensor([0]))
    with pytest.raises(MetricError, match="bool mask"):
        ev.add(torch.zeros(1, 6), torch.tensor([0]), exclude=torch.zeros(1, 6))
    with pytest.raises(MetricError, match="n_items"):
        RankingEvaluator(5, (10,))
    with pytest.raises(MetricError, match="identically configured"):
        add_sums({"count": 1.0}, {"count": 1.0, "hr@1_sum": 1.0})
    # NaN at an excluded item is fine
    ev.add(
        torch.tensor([[float("nan"), 1, 2, 3, 4, 5]]),
        torch.tensor([5]),
        exclude=torch.tensor([[True, False, False, False, False, False]]),
    )
    assert ev.result()["hr@3"] == 1.0


def test_exclusion_mask() -> None:
    mask = exclusion_mask(2, 4, np.array([0, 1, 1, 1]), np.array([3, 0, 2, 2]))
    expected = torch.tensor([[False, False, False, True], [True, False, True, False]])
    assert torch.equal(mask, expected)
    assert not exclusion_mask(2, 4, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)).any()
    with pytest.raises(MetricError, match="items must lie"):
        exclusion_mask(2, 4, np.array([0]), np.array([4]))


def test_public_names() -> None:
    assert set(metrics.__all__) == {
        "RANKING_SUM_NAMES", "RATING_KEYS", "MetricError", "RankingEvaluator", "add_sums",
        "exclusion_mask", "ranking_metrics_from_sums", "rating_metrics", "rating_sums",
    }  # fmt: skip
