"""Evaluation: exclusion of context items, the test context, rating clipping."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollinate.shared.data.splits import leave_last_out
from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError
from pollinate.shared.models import RecModel
from pollinate.shared.models.base import Batch
from pollinate.shared.training import context_rows, evaluate_ranking, evaluate_rating


class _Fixed(RecModel):
    """Scores items by a fixed table, the same for every user."""

    LOCAL_PREFIXES = ()

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.n_items = len(scores)
        self.table = torch.tensor(scores)

    def score(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        return self.table[items]

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.table.expand(batch["user"].shape[0], -1)


def _data() -> Interactions:
    # user 0: items 0, 1, 2 then valid 3, test 4; user 1: 0, 1, valid 2, test 5
    users = np.array([0, 0, 0, 0, 0, 1, 1, 1, 1])
    items = np.array([0, 1, 2, 3, 4, 0, 1, 2, 5])
    return Interactions("toy", users, items, None, np.arange(9), np.arange(2), np.arange(6))


def test_context_rows() -> None:
    split = leave_last_out(_data())
    assert set(context_rows(split, "valid")) == set(split.train)
    assert set(context_rows(split, "test")) == set(split.train) | set(split.valid)
    with pytest.raises(ConfigError):
        context_rows(split, "train")  # type: ignore[arg-type]


def test_training_items_are_excluded_from_the_ranking() -> None:
    data = _data()
    split = leave_last_out(data)
    # Items 0, 1, 2 score highest. User 0 trained on 0, 1, 2 (valid 3); user 1 on 0, 1
    # (valid 2). Once the training items are excluded, each valid item ranks first.
    model = _Fixed([9.0, 8.0, 7.0, 6.0, 1.0, 0.0])
    valid = evaluate_ranking(model, data, split, "valid", ks=(1, 2))
    assert valid["hr@1"] == 1.0
    assert valid["ndcg@1"] == 1.0


def test_test_part_also_excludes_the_validation_item() -> None:
    data = _data()
    split = leave_last_out(data)
    # Valid items (3 and 2) score highest. Excluded when testing, so each test item
    # (4 and 5) is second among what is left; counted, they would push it to third.
    model = _Fixed([0.0, 0.0, 9.0, 8.0, 1.0, 2.0])
    test = evaluate_ranking(model, data, split, "test", ks=(1, 2))
    assert test["hr@1"] == 0.0
    assert test["hr@2"] == 1.0


def test_rating_evaluation_clips_to_the_scale() -> None:
    model = _Fixed([7.0, -3.0])
    ex = {
        "user": torch.tensor([0, 0]),
        "item": torch.tensor([0, 1]),
        "rating": torch.tensor([5.0, 1.0]),
    }
    assert evaluate_rating(model, ex, rating_scale=(1.0, 5.0))["rmse"] == 0.0
    assert evaluate_rating(model, ex)["rmse"] == pytest.approx(np.sqrt((4 + 16) / 2))
    with pytest.raises(ConfigError):
        evaluate_rating(model, {"user": ex["user"], "item": ex["item"]})


def test_fast_accuracy_path_matches_the_full_evaluator() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 25
    users = np.repeat(np.arange(n_users), 6)
    items = np.concatenate([rng.choice(n_items, 6, replace=False) for _ in range(n_users)])
    data = Interactions(
        "toy", users, items, None, np.arange(len(users)), np.arange(n_users), np.arange(n_items)
    )
    split = leave_last_out(data)
    # Coarse scores make ties, which both paths must break pessimistically.
    model = _Fixed(np.round(rng.normal(size=n_items), 1).tolist())
    for part in ("valid", "test"):
        full = evaluate_ranking(model, data, split, part, ks=(3, 10))  # type: ignore[arg-type]
        fast = evaluate_ranking(model, data, split, part, ks=(3, 10), full=False)  # type: ignore[arg-type]
        assert set(fast) <= set(full)
        for key, value in fast.items():
            assert value == pytest.approx(full[key], abs=1e-12), key
