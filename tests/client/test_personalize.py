"""The refit of a device's private parameters: the ridge optimum (ratings), checked
against an independent least-squares solve, and the softmax optimum (rankings), checked
against scipy and against the gradient of the device's own training loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pollinate.client.device_data import DeviceIndex
from pollinate.client.personalize import refit_private, ridge_user_fit, softmax_user_fit
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.tasks import load_task
from pollinate.shared.training.examples import build_examples
from pollinate.shared.training.losses import get_loss


def test_the_ridge_fit_matches_an_augmented_least_squares_solve() -> None:
    rng = np.random.default_rng(0)
    V, t, reg = rng.normal(size=(30, 4)), rng.normal(size=30), 0.1
    bias, vec = ridge_user_fit(V, t, reg)
    # Ridge as ordinary least squares on rows augmented with sqrt(reg·n)·I.
    X = np.hstack([np.ones((30, 1)), V])
    X_aug = np.vstack([X, np.sqrt(reg * 30) * np.eye(5)])
    t_aug = np.concatenate([t, np.zeros(5)])
    expected = np.linalg.lstsq(X_aug, t_aug, rcond=None)[0]
    np.testing.assert_allclose([bias, *vec], expected, rtol=1e-10, atol=1e-12)
    assert ridge_user_fit(np.zeros((0, 4)), np.zeros(0), reg)[0] == 0.0
    with pytest.raises(ConfigError):
        ridge_user_fit(V, t, 0.0)


@pytest.fixture(scope="module")
def devices() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    )


def device_objective(
    model: RecModel, rows_items: np.ndarray, ratings: np.ndarray, reg: float
) -> float:
    params = dict(model.named_parameters())
    with torch.no_grad():
        q = params["item_factors.weight"][torch.as_tensor(rows_items)].double()
        b = params["item_bias.weight"][torch.as_tensor(rows_items), 0].double()
        mu = params["global_bias.weight"][0, 0].double()
        p, bu = params["user_factors.weight"][0].double(), params["user_bias.weight"][0, 0].double()
        err = torch.as_tensor(ratings, dtype=torch.float64) - (mu + b + bu + q @ p)
        n = len(ratings)
        return float(err.pow(2).sum() + reg * n * (bu**2 + p.pow(2).sum()))


def test_the_refit_minimises_the_device_loss_and_leaves_global_tables_alone(
    devices: DeviceIndex,
) -> None:
    torch.manual_seed(0)
    device = devices.device(3)
    model = build_model("mf", n_users=1, n_items=device.data.n_items, dim=4, init_std=0.3,
                        global_mean=3.0)  # fmt: skip
    rows = device.split.train
    items, ratings = device.data.items[rows], device.data.ratings[rows]
    before_global = model.global_state()
    start = device_objective(model, items, ratings, 0.1)
    refit_private(model, device, 0.1)
    best = device_objective(model, items, ratings, 0.1)
    assert best < start
    for k, v in model.global_state().items():
        np.testing.assert_array_equal(v, before_global[k])
    # Any nudge of the private parameters from the optimum raises the loss.
    params = dict(model.named_parameters())
    for name in ("user_factors.weight", "user_bias.weight"):
        with torch.no_grad():
            params[name] += 0.01
        assert device_objective(model, items, ratings, 0.1) > best
        with torch.no_grad():
            params[name] -= 0.01


def test_the_softmax_fit_matches_scipy_on_the_same_objective() -> None:
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    rng = np.random.default_rng(1)
    V, b, reg = rng.normal(size=(50, 5)), rng.normal(size=50), 0.05
    m = V[[3, 7, 7, 20]].mean(axis=0)
    p = softmax_user_fit(V, b, m, reg)

    def f(x: np.ndarray) -> float:
        return float(logsumexp(V @ x + b) - m @ x + reg * x @ x)

    ref = minimize(f, np.zeros(5), method="BFGS", options={"gtol": 1e-10}).x
    np.testing.assert_allclose(p, ref, atol=1e-6)
    # A far-off start reaches the same optimum.
    np.testing.assert_allclose(softmax_user_fit(V, b, m, reg, start=50 * np.ones(5)), p,
                               atol=1e-8)  # fmt: skip
    with pytest.raises(ConfigError):
        softmax_user_fit(V, b, m, 0.0)


def test_the_ranking_refit_zeroes_the_gradient_of_the_device_training_loss() -> None:
    """At the refitted vector the device's own full-softmax training loss (the one
    local SGD uses, with the same L2 on the user row) is flat in the private vector."""
    ranking = DeviceIndex(
        load_task("synthetic", task="ranking", synthetic_users=60, synthetic_items=40)
    )
    device = ranking.device(2)
    torch.manual_seed(0)
    model = build_model("mf", n_users=1, n_items=device.data.n_items, dim=4, init_std=0.5)
    before_global = model.global_state()
    loss_fn = get_loss("softmax", reg=0.1)
    examples = build_examples(device.data, device.split.train, history_len=0)
    user = model.user_factors.weight

    def user_grad() -> torch.Tensor:
        model.zero_grad()
        loss_fn(model, examples, None).mean().backward()
        assert user.grad is not None
        return user.grad[0].clone()

    assert user_grad().norm() > 1e-2
    refit_private(model, device, 0.1)
    assert user_grad().norm() < 1e-5
    for k, v in model.global_state().items():
        np.testing.assert_array_equal(v, before_global[k])


def test_the_refit_refuses_models_it_does_not_fit() -> None:
    ranking = DeviceIndex(
        load_task("synthetic", task="ranking", synthetic_users=60, synthetic_items=40)
    )
    device = ranking.device(0)
    model = build_model("interest", n_users=1, n_items=device.data.n_items, dim=4, n_heads=1)
    with pytest.raises(ConfigError, match="mf model"):
        refit_private(model, device, 0.1)
