"""The epoch loop and early stopping, with an explicit RNG."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from pollinate.shared.errors import ConfigError
from pollinate.shared.training.examples import Examples, n_examples, take
from pollinate.shared.training.losses import LossFn


def iterate_batches(
    examples: Examples,
    batch_size: int,
    generator: torch.Generator | None = None,
    *,
    shuffle: bool = True,
) -> Iterator[Examples]:
    """Mini-batches of ``examples``; shuffled with ``generator`` when ``shuffle``."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    n = n_examples(examples)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for lo in range(0, n, batch_size):
        yield take(examples, order[lo : lo + batch_size])


def train_epoch(
    model: nn.Module,
    examples: Examples,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    batch_size: int = 1024,
    reduction: Literal["sum", "mean"] = "mean",
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """One pass over shuffled ``examples``; returns the mean per-example loss.

    ``reduction="sum"`` steps on the summed per-example loss (SGD à la Surprise, where
    the learning rate is per example); ``"mean"`` on its mean (Adam).
    """
    model.train()
    total, count = 0.0, 0
    for batch in iterate_batches(examples, batch_size, generator):
        losses = loss_fn(model, batch, generator)
        loss = losses.sum() if reduction == "sum" else losses.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += float(losses.detach().sum())
        count += losses.shape[0]
        if on_batch is not None:
            on_batch(losses.shape[0])
    if not math.isfinite(total):
        raise FloatingPointError("training loss is not finite; lower the learning rate")
    return total / max(count, 1)


class EarlyStopping:
    """Track a validation metric, keep the best weights, say when to stop.

    Stops after ``patience`` consecutive epochs without improvement (0: at the first).
    ``mode="min"`` for errors (RMSE), ``"max"`` for ranking quality (NDCG).
    """

    def __init__(
        self, patience: int, mode: Literal["min", "max"] = "min", min_delta: float = 0.0
    ) -> None:
        if patience < 0:
            raise ConfigError(f"patience must be >= 0, got {patience}")
        if mode not in ("min", "max"):
            raise ConfigError(f"mode must be 'min' or 'max', got {mode!r}")
        self.patience = patience
        self.mode = mode
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_epoch = -1
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0

    def improved(self, value: float) -> bool:
        if self.best is None:
            return math.isfinite(value)
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def step(self, value: float, model: nn.Module, epoch: int) -> bool:
        """Record ``value`` after ``epoch``; ``True`` when training should stop."""
        if self.improved(value):
            self.best = value
            self.best_epoch = epoch
            self.best_state = copy.deepcopy(model.state_dict())
            self.bad_epochs = 0
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience

    def restore(self, model: nn.Module) -> None:
        """Load the best weights seen (no-op before the first step)."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)


@dataclass
class FitResult:
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = -1
    best: float | None = None
    stopped_early: bool = False


def fit(
    model: nn.Module,
    train: Examples,
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    *,
    epochs: int,
    evaluate: Callable[[nn.Module], dict[str, float]],
    monitor: str,
    mode: Literal["min", "max"],
    patience: int = 3,
    batch_size: int = 1024,
    reduction: Literal["sum", "mean"] = "mean",
    on_batch: Callable[[int], None] | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FitResult:
    """Train up to ``epochs`` epochs, evaluating after each; stop after ``patience``
    epochs without improvement of ``evaluate(model)[monitor]`` and restore the best."""
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    stopper = EarlyStopping(patience, mode)
    result = FitResult()
    for epoch in range(1, epochs + 1):
        loss = train_epoch(
            model,
            train,
            loss_fn,
            optimizer,
            generator,
            batch_size=batch_size,
            reduction=reduction,
            on_batch=on_batch,
        )
        metrics = evaluate(model)
        if monitor not in metrics:
            raise ConfigError(f"monitor {monitor!r} is not among {sorted(metrics)}")
        row = {"epoch": float(epoch), "train_loss": loss, **metrics}
        result.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if stopper.step(metrics[monitor], model, epoch):
            result.stopped_early = True
            break
    stopper.restore(model)
    result.best_epoch = stopper.best_epoch
    result.best = stopper.best
    return result
