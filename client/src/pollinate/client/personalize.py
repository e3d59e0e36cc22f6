"""Refit of a device's private parameters to the global tables (``mf``).

**Rating task: closed form.**

Given the global tables (item vectors ``q_i``, item biases ``b_i``, global mean ``μ``),
the private bias ``b_u`` and vector ``p_u`` that minimise the device's own training loss

    Σ_i (r_ui − μ − b_i − b_u − p_u·q_i)² + λ·n·(b_u² + ‖p_u‖²)

(the same per-example L2 as local training, over the device's ``n`` training rows) solve
one ``(k+1) × (k+1)`` ridge system. A device that refits before each local round sends
item updates computed with its best user vector for the current item table, as in
Federated Collaborative Filtering (Ammad-ud-din et al., 2019), and one that refits before
evaluating scores with it. On ml-latest-small this took federated test RMSE from 0.8767
to 0.8593 (simulations/benchmarks/RESULTS.md).

**Ranking task: Newton's method.** With the full-catalogue softmax, the device's loss in
its private vector ``p`` alone is

    f(p) = logsumexp_j(q_j·p + b_j) − m·p + λ‖p‖²        (m: mean of the q_i it consumed)

(per training row, dropping terms free of ``p``; ``b_u`` shifts every score equally and
does not enter). ``f`` is strictly convex, so a few damped Newton steps on its
``k × k`` Hessian find the unique optimum. For a device that trains rarely (Amazon
Beauty at small sample rates), this is what gives it a personal vector: without it the
vector stays near its random start between its few rounds.

Not with local DP (the config refuses it): the refit reads raw training rows without noise,
and every later update of the device would depend on it, outside Opacus's accounting.
Under user-level DP alone it is fine: the server clips and noises whatever comes back.
"""

from __future__ import annotations

import numpy as np
import torch

from pollinate.client.device_data import DeviceData
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import RecModel
from pollinate.shared.models.mf import BiasedMF

#: Newton iterations of the ranking refit, and the gradient norm at which it stops.
_NEWTON_STEPS = 25
_NEWTON_TOL = 1e-9


def ridge_user_fit(
    item_vectors: np.ndarray,
    targets: np.ndarray,
    reg: float,
) -> tuple[float, np.ndarray]:
    """``(b_u, p_u)`` minimising ``Σ (t_i − b_u − p_u·q_i)² + reg·n·(b_u² + ‖p_u‖²)``.

    ``item_vectors`` is (n, k), ``targets`` (n,) the ratings minus ``μ + b_i``. With no
    rows the minimiser is zero.
    """
    if reg <= 0:
        raise ConfigError(f"the refit's L2 weight must be positive, got {reg}")
    n, k = item_vectors.shape
    if n == 0:
        return 0.0, np.zeros(k)
    X = np.hstack([np.ones((n, 1)), np.asarray(item_vectors, dtype=np.float64)])
    A = X.T @ X + reg * n * np.eye(k + 1)
    x = np.linalg.solve(A, X.T @ np.asarray(targets, dtype=np.float64))
    return float(x[0]), x[1:]


def softmax_user_fit(
    item_vectors: np.ndarray,
    item_bias: np.ndarray,
    consumed_mean: np.ndarray,
    reg: float,
    start: np.ndarray | None = None,
) -> np.ndarray:
    """The ``p`` minimising ``logsumexp(V p + b) − m·p + reg·‖p‖²``.

    ``item_vectors`` is the whole table ``V`` (M, k), ``item_bias`` ``b`` (M,) and
    ``consumed_mean`` ``m`` (k,) the mean vector of the items the device consumed.
    Damped Newton from ``start`` (zero when ``None``) with a backtracking line search;
    the objective is strictly convex for ``reg > 0``.
    """
    if reg <= 0:
        raise ConfigError(f"the refit's L2 weight must be positive, got {reg}")
    V = np.asarray(item_vectors, dtype=np.float64)
    b = np.asarray(item_bias, dtype=np.float64)
    m = np.asarray(consumed_mean, dtype=np.float64)
    k = V.shape[1]
    p = np.zeros(k) if start is None else np.asarray(start, dtype=np.float64).copy()

    def objective(x: np.ndarray) -> tuple[float, np.ndarray]:
        s = V @ x + b
        top = s.max()
        w = np.exp(s - top)
        z = w.sum()
        return float(top + np.log(z) - m @ x + reg * x @ x), w / z

    f, pi = objective(p)
    for _ in range(_NEWTON_STEPS):
        mean_v = V.T @ pi
        grad = mean_v - m + 2 * reg * p
        if np.linalg.norm(grad) < _NEWTON_TOL:
            break
        hess = (V * pi[:, None]).T @ V - np.outer(mean_v, mean_v) + 2 * reg * np.eye(k)
        step = np.linalg.solve(hess, grad)
        t = 1.0
        while True:
            f_new, pi_new = objective(p - t * step)
            if f_new <= f - 0.25 * t * (grad @ step) or t < 1e-8:
                break
            t *= 0.5
        if t < 1e-8:
            break
        p, f, pi = p - t * step, f_new, pi_new
    return p


@torch.no_grad()
def refit_private(model: RecModel, device: DeviceData, reg: float) -> None:
    """Set ``model``'s private parameters to their optimum on the device's training rows
    against its global tables, in place (the global tables are read, not changed):
    the ridge solution on ratings, the softmax one on rankings."""
    if not isinstance(model, BiasedMF):
        raise ConfigError(
            "the private refit is defined for the mf model; turn it off with --no-private-refit"
        )
    if device.task == "ranking":
        _refit_ranking(model, device, reg)
        return
    data, rows = device.data, device.split.train
    if data.ratings is None:
        raise ConfigError("the private refit needs explicit ratings")
    items = np.asarray(data.items[rows], dtype=np.int64)
    # numpy views of the tables (no autograd on this path): the same float64 arithmetic.
    vectors = model.item_factors.weight.detach().numpy()[items].astype(np.float64)
    mu = np.float64(model.global_bias.weight.detach().numpy()[0, 0])
    offset = model.item_bias.weight.detach().numpy()[items, 0].astype(np.float64) + mu
    targets = np.asarray(data.ratings[rows], dtype=np.float64) - offset
    bias, vector = ridge_user_fit(vectors, targets, reg)
    model.user_bias.weight.detach().numpy()[0, 0] = bias
    model.user_factors.weight.detach().numpy()[0] = vector


def _refit_ranking(model: BiasedMF, device: DeviceData, reg: float) -> None:
    rows = device.split.train
    if len(rows) == 0:
        return
    V = model.item_factors.weight.double().numpy()
    items = np.asarray(device.data.items[rows], dtype=np.int64)
    p = softmax_user_fit(
        V,
        model.item_bias.weight[:, 0].double().numpy(),
        V[items].mean(axis=0),
        reg,
        start=model.user_factors.weight[0].double().numpy(),
    )
    model.user_factors.weight[0] = torch.as_tensor(p, dtype=model.user_factors.weight.dtype)
