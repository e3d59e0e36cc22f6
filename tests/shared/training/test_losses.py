"""Per-example losses: values, shapes, determinism, and clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from pollinate.shared.errors import ConfigError
from pollinate.shared.models import BiasedMF
from pollinate.shared.training import bpr, get_loss, mse, sampled_softmax, softmax


@pytest.fixture
def model() -> BiasedMF:
    return BiasedMF(
        n_users=4, n_items=30, dim=5, global_mean=3.0, generator=torch.Generator().manual_seed(0)
    )


@pytest.fixture
def batch() -> dict[str, torch.Tensor]:
    return {
        "user": torch.tensor([0, 1, 3]),
        "item": torch.tensor([2, 7, 29]),
        "rating": torch.tensor([4.0, 1.0, 5.0]),
    }


def test_mse_is_squared_error_plus_touched_rows_l2(
    model: BiasedMF, batch: dict[str, torch.Tensor]
) -> None:
    loss = mse(model, batch, reg=0.5)
    with torch.no_grad():
        pred = model.score(batch, batch["item"])
        u, i = batch["user"], batch["item"]
        pen = (
            model.user_factors.weight[u].pow(2).sum(1)
            + model.item_factors.weight[i].pow(2).sum(1)
            + model.user_bias.weight[u, 0] ** 2
            + model.item_bias.weight[i, 0] ** 2
        )
    assert loss.shape == (3,)
    assert torch.allclose(loss, (pred - batch["rating"]) ** 2 + 0.5 * pen)


def test_mse_needs_ratings(model: BiasedMF, batch: dict[str, torch.Tensor]) -> None:
    implicit = {k: v for k, v in batch.items() if k != "rating"}
    with pytest.raises(ConfigError, match="ranking loss"):
        mse(model, implicit)


def test_bpr_is_deterministic_given_the_generator(
    model: BiasedMF, batch: dict[str, torch.Tensor]
) -> None:
    a = bpr(model, batch, torch.Generator().manual_seed(1), n_negatives=4)
    b = bpr(model, batch, torch.Generator().manual_seed(1), n_negatives=4)
    assert a.shape == (3,)
    assert torch.equal(a, b)
    assert (a > 0).all()


def test_bpr_value_for_one_negative(model: BiasedMF, batch: dict[str, torch.Tensor]) -> None:
    neg = torch.randint(0, 30, (3, 1), generator=torch.Generator().manual_seed(2))
    loss = bpr(model, batch, torch.Generator().manual_seed(2))
    with torch.no_grad():
        diff = model.score(batch, batch["item"]) - model.score(batch, neg)[:, 0]
    assert torch.allclose(loss, -F.logsigmoid(diff))


def test_sampled_softmax_masks_negatives_equal_to_the_positive(model: BiasedMF) -> None:
    # With a catalogue of 1 item every negative is the positive: the loss must be 0.
    one = BiasedMF(n_users=1, n_items=1, dim=3)
    b = {"user": torch.tensor([0, 0]), "item": torch.tensor([0, 0])}
    assert torch.allclose(sampled_softmax(one, b, torch.Generator().manual_seed(0)), torch.zeros(2))


def test_softmax_is_cross_entropy_over_the_catalogue(
    model: BiasedMF, batch: dict[str, torch.Tensor]
) -> None:
    loss = softmax(model, batch)
    with torch.no_grad():
        expected = F.cross_entropy(model.score_all(batch), batch["item"], reduction="none")
    assert torch.allclose(loss, expected)


def test_losses_are_per_example(model: BiasedMF, batch: dict[str, torch.Tensor]) -> None:
    # Each example's loss depends on that example only (what Opacus clips).
    for name in ("mse", "softmax"):
        fn = get_loss(name, reg=0.1)
        full = fn(model, batch, None)
        single = fn(model, {k: v[1:2] for k, v in batch.items()}, None)
        assert torch.allclose(full[1:2], single)


def test_get_loss_binds_hyper_parameters_and_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown loss"):
        get_loss("hinge")
    assert get_loss("mse", reg=0.1, n_negatives=5) is not None  # n_negatives ignored
