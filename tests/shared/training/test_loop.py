"""The epoch loop and early stopping."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pollinate.shared.errors import ConfigError
from pollinate.shared.models import BiasedMF
from pollinate.shared.training import EarlyStopping, fit, get_loss, iterate_batches


def test_early_stopping_min_mode_patience_and_restore() -> None:
    model = nn.Linear(1, 1, bias=False)
    stop = EarlyStopping(patience=2, mode="min")
    values = [1.0, 0.5, 0.7, 0.6]
    decisions = []
    for epoch, v in enumerate(values, start=1):
        with torch.no_grad():
            model.weight.fill_(v)
        decisions.append(stop.step(v, model, epoch))
    assert decisions == [False, False, False, True]  # two epochs without improvement
    assert stop.best == 0.5 and stop.best_epoch == 2
    stop.restore(model)
    assert model.weight.item() == 0.5


def test_early_stopping_max_mode_and_nan() -> None:
    model = nn.Linear(1, 1)
    stop = EarlyStopping(patience=0, mode="max")
    assert stop.step(float("nan"), model, 1)  # patience 0: stop at the first non-improvement
    assert stop.best is None  # NaN is never an improvement
    stop = EarlyStopping(patience=1, mode="max")
    assert not stop.step(0.1, model, 1)
    assert stop.step(0.05, model, 2)
    with pytest.raises(ConfigError):
        EarlyStopping(patience=-1)
    with pytest.raises(ConfigError):
        EarlyStopping(patience=1, mode="up")  # type: ignore[arg-type]


def test_iterate_batches_covers_every_example_once() -> None:
    ex = {"user": torch.arange(10), "item": torch.arange(10) * 2}
    seen = torch.cat([b["user"] for b in iterate_batches(ex, 3, torch.Generator().manual_seed(0))])
    assert sorted(seen.tolist()) == list(range(10))
    batches = list(iterate_batches(ex, 4, shuffle=False))
    assert [len(b["user"]) for b in batches] == [4, 4, 2]
    assert torch.equal(batches[0]["item"], torch.tensor([0, 2, 4, 6]))


def test_fit_stops_early_and_restores_the_best_epoch() -> None:
    torch.manual_seed(0)
    model = BiasedMF(n_users=5, n_items=5, dim=2, generator=torch.Generator().manual_seed(0))
    ex = {
        "user": torch.tensor([0, 1, 2, 3, 4]),
        "item": torch.tensor([0, 1, 2, 3, 4]),
        "rating": torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]),
    }
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    scores = iter([0.9, 0.8, 0.85, 0.95, 0.99, 0.7])
    states: list[torch.Tensor] = []

    def evaluate(m: nn.Module) -> dict[str, float]:
        states.append(model.item_bias.weight.detach().clone())
        return {"rmse": next(scores)}

    result = fit(
        model,
        ex,
        get_loss("mse"),
        opt,
        torch.Generator().manual_seed(0),
        epochs=6,
        evaluate=evaluate,
        monitor="rmse",
        mode="min",
        patience=2,
        batch_size=2,
    )
    assert result.stopped_early
    assert [int(r["epoch"]) for r in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2 and result.best == 0.8
    assert torch.equal(model.item_bias.weight, states[1])


def test_fit_rejects_an_unknown_monitor() -> None:
    model = BiasedMF(n_users=1, n_items=1, dim=1)
    ex = {"user": torch.tensor([0]), "item": torch.tensor([0]), "rating": torch.tensor([1.0])}
    with pytest.raises(ConfigError, match="monitor"):
        fit(
            model,
            ex,
            get_loss("mse"),
            torch.optim.SGD(model.parameters(), lr=0.1),
            torch.Generator(),
            epochs=1,
            evaluate=lambda m: {"mae": 1.0},
            monitor="rmse",
            mode="min",
        )
