"""Training utilities shared by the centralized reference and the devices: example
building, per-example losses, the epoch loop with early stopping, and evaluation."""

from __future__ import annotations

from pollinate.shared.training.evaluate import (
    context_rows,
    evaluate_ranking,
    evaluate_rating,
    predict_ratings,
    ranking_examples,
)
from pollinate.shared.training.examples import (
    Examples,
    build_examples,
    gap_buckets,
    n_examples,
    take,
)
from pollinate.shared.training.loop import (
    EarlyStopping,
    FitResult,
    fit,
    iterate_batches,
    train_epoch,
)
from pollinate.shared.training.losses import (
    LOSSES,
    OPACUS_LOSSES,
    RANKING_LOSSES,
    RATING_LOSSES,
    LossFn,
    bpr,
    get_loss,
    mse,
    sample_negatives,
    sampled_softmax,
    shared_softmax,
    softmax,
    unwrap,
)

__all__ = [
    "LOSSES",
    "OPACUS_LOSSES",
    "RANKING_LOSSES",
    "RATING_LOSSES",
    "EarlyStopping",
    "Examples",
    "FitResult",
    "LossFn",
    "bpr",
    "build_examples",
    "context_rows",
    "evaluate_ranking",
    "evaluate_rating",
    "fit",
    "gap_buckets",
    "get_loss",
    "iterate_batches",
    "mse",
    "n_examples",
    "predict_ratings",
    "ranking_examples",
    "sample_negatives",
    "sampled_softmax",
    "shared_softmax",
    "softmax",
    "take",
    "train_epoch",
    "unwrap",
]
