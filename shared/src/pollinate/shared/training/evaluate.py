"""Evaluation of a trained model: rating error, and full ranking over the catalogue.

Full ranking scores every item for each held-out row and excludes the items the user
already has in the context: the training rows for ``valid``, training and validation
rows for ``test``. Scoring is batched over examples and vectorized.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import nn

from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError
from pollinate.shared.metrics import RankingEvaluator, exclusion_mask, rating_metrics, rating_sums
from pollinate.shared.training.examples import Examples, build_examples, n_examples, take
from pollinate.shared.training.losses import unwrap


@torch.no_grad()
def predict_ratings(
    model: nn.Module,
    examples: Examples,
    *,
    batch_size: int = 8192,
    rating_scale: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Predicted ratings of every example, clipped to ``rating_scale`` when given."""
    m = unwrap(model)
    was_training = m.training
    m.eval()
    try:
        n = n_examples(examples)
        preds = [
            m.score(batch, batch["item"])
            for batch in (
                take(examples, slice(lo, lo + batch_size)) for lo in range(0, n, batch_size)
            )
        ]
    finally:
        m.train(was_training)
    pred = torch.cat(preds) if preds else torch.empty(0)
    if rating_scale is not None:
        pred = pred.clamp(*rating_scale)
    return pred


def evaluate_rating(
    model: nn.Module,
    examples: Examples,
    *,
    batch_size: int = 8192,
    rating_scale: tuple[float, float] | None = None,
) -> dict[str, float]:
    """``{"rmse", "mae"}`` of the model on examples that carry ``rating``."""
    if "rating" not in examples:
        raise ConfigError("rating evaluation needs examples with ratings (explicit data)")
    pred = predict_ratings(model, examples, batch_size=batch_size, rating_scale=rating_scale)
    return {k: float(v) for k, v in rating_metrics(rating_sums(pred, examples["rating"])).items()}


def context_rows(split: Split, part: Literal["valid", "test"]) -> np.ndarray:
    """The rows a ``part`` example may see: train for valid, train + valid for test."""
    if part == "valid":
        return split.train
    if part == "test":
        return np.concatenate([split.train, split.valid])
    raise ConfigError(f"part must be 'valid' or 'test', got {part!r}")


class _UserItems:
    """The context items of every user, as CSR arrays, for exclusion masks."""

    def __init__(self, data: Interactions, rows: np.ndarray) -> None:
        order = np.argsort(data.users[rows], kind="stable")
        self.items = data.items[rows][order]
        counts = np.bincount(data.users[rows], minlength=data.n_users)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])

    def pairs(self, users: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(example index, item) of every context item of each of ``users``."""
        starts = self.offsets[users]
        counts = self.offsets[users + 1] - starts
        ex = np.repeat(np.arange(len(users)), counts)
        first = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        return ex, self.items[first + np.arange(len(ex))]


def _accuracy_sums(
    scores: torch.Tensor, targets: torch.Tensor, exclude: torch.Tensor, ks: Sequence[int]
) -> dict[str, float]:
    """HR, recall, NDCG and MRR sums of one-target rows, by the same pessimistic rule as
    :mod:`pollinate.shared.metrics`: ``rank = #{non-excluded i : s_i >= s_target}``, and
    an excluded target is a miss. A single pass over the scores, no top-K lists."""
    s = scores.to(torch.float32)
    target_score = s.gather(1, targets[:, None])
    rank = ((s >= target_score) & ~exclude).sum(1).to(torch.float64)
    rank = torch.where(exclude.gather(1, targets[:, None])[:, 0], torch.inf, rank)
    out: dict[str, float] = {}
    for k in ks:
        hit = rank <= k
        out[f"hr@{k}"] = float(hit.sum())
        out[f"recall@{k}"] = out[f"hr@{k}"]
        out[f"ndcg@{k}"] = float(torch.where(hit, 1.0 / torch.log2(rank + 1.0), 0.0).sum())
        out[f"mrr@{k}"] = float(torch.where(hit, 1.0 / rank, 0.0).sum())
    return out


@torch.no_grad()
def evaluate_ranking(
    model: nn.Module,
    data: Interactions,
    split: Split,
    part: Literal["valid", "test"] = "valid",
    *,
    batch_size: int = 1024,
    ks: Sequence[int] = (10, 20),
    examples: Examples | None = None,
    full: bool = True,
) -> dict[str, float]:
    """Full-ranking metrics of ``part`` rows (``hr@10``, ``ndcg@10``, ``recall@20``, ...).

    Every item is scored; the user's context items (see :func:`context_rows`) are
    excluded. Novelty uses the popularity of items in the context rows. Pass
    ``examples`` (built by :func:`ranking_examples`) to reuse them across epochs.
    ``full=False`` computes only the accuracy metrics (HR, recall, NDCG, MRR), by the
    same definitions in a single cheap pass: enough to monitor early stopping.
    """
    m = unwrap(model)
    context = context_rows(split, part)
    rows = split.valid if part == "valid" else split.test
    if examples is None:
        examples = ranking_examples(m, data, split, part)
    seen = _UserItems(data, context)
    evaluator = (
        RankingEvaluator(
            data.n_items,
            ks=tuple(ks),
            item_popularity=np.bincount(data.items[context], minlength=data.n_items),
            n_popularity_users=data.n_users,
            item_genres=data.item_genres,
        )
        if full
        else None
    )
    sums: dict[str, float] = {}
    was_training = m.training
    m.eval()
    try:
        for lo in range(0, len(rows), batch_size):
            batch = take(examples, slice(lo, lo + batch_size))
            users = batch["user"].numpy()
            ex, items = seen.pairs(users)
            exclude = exclusion_mask(len(users), data.n_items, ex, items)
            scores = m.score_all(batch)
            if evaluator is not None:
                evaluator.add(scores, batch["item"], exclude)
            else:
                for key, value in _accuracy_sums(scores, batch["item"], exclude, ks).items():
                    sums[key] = sums.get(key, 0.0) + value
    finally:
        m.train(was_training)
    if evaluator is not None:
        return {k: float(v) for k, v in evaluator.result().items()}
    if not len(rows):
        raise ConfigError(f"no {part} rows to evaluate")
    return {k: v / len(rows) for k, v in sums.items()}


def ranking_examples(
    model: nn.Module, data: Interactions, split: Split, part: Literal["valid", "test"]
) -> Examples:
    """Examples of ``part`` rows with the history the model reads from its context."""
    rows = split.valid if part == "valid" else split.test
    history_len = int(getattr(unwrap(model), "history_len", 0))
    return build_examples(
        data, rows, context_rows=context_rows(split, part), history_len=history_len
    )
