"""Local SGD of biased ``mf`` on ratings, with its gradients written out in numpy.

An ``mf`` device on ratings takes a handful of optimizer steps on a few dozen rows a
round. Through torch, each step builds an autograd graph over five embedding lookups and
walks it back, which costs far more than the arithmetic (about 0.3 ms a step against a
few microseconds of multiply-adds). The squared loss of ``μ + b_u + b_i + p_u · q_i``
has a closed-form gradient, so :func:`train_steps` takes exactly the steps of
:func:`pollinate.client.training.train_device` (the same batches from the same
generator draws, the same summed loss and L2 penalty, the same SGD groups and rates)
on numpy views of the model's own parameters. Its results equal torch's up to float32
rounding (pinned against the autograd path by ``tests/client/test_mf_sgd.py``).

Only the non-private path uses it: DP-SGD needs per-example gradients, and those stay
Opacus's (:mod:`pollinate.client.dp_training`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from pollinate.client.device_data import DeviceData
from pollinate.shared.models.mf import BiasedMF

if TYPE_CHECKING:
    from pollinate.client.training import LocalTrainConfig

Arrays = dict[str, np.ndarray]


def applies(model: BiasedMF, device: DeviceData, cfg: LocalTrainConfig) -> bool:
    """Whether :func:`train_steps` computes this round: ``mf`` (exactly, not a subclass),
    the squared loss on explicit ratings, plain SGD, one user on the device."""
    data = device.data
    return (
        type(model) is BiasedMF  # a subclass may score differently
        and cfg.loss == "mse"
        and cfg.optimizer == "sgd"
        and data.ratings is not None
        and model.n_users == 1
        and model.user_factors.weight.dtype == torch.float32
    )


def train_steps(
    model: BiasedMF,
    device: DeviceData,
    cfg: LocalTrainConfig,
    generator: torch.Generator,
    steps: int,
    global_names: tuple[str, ...],
) -> tuple[Arrays, float, int]:
    """Take ``steps`` SGD steps (``cfg.epochs`` shuffled passes, cut at ``steps``) in
    place on ``model``; return the update to its global parameters, the summed loss and
    the number of examples the loss summed over.

    The generator is drawn from as :func:`~pollinate.client.training.train_device` draws
    from it (one seed for torch's global RNG, then one permutation per epoch), so the
    batches are the same and the generator is left in the same state.
    """
    data, rows = device.data, device.split.train
    assert data.ratings is not None
    items_all = np.asarray(data.items[rows], dtype=np.int64)
    ratings_all = np.asarray(data.ratings[rows], dtype=np.float32)
    n = len(rows)
    # Views of the model's own parameters: the steps below update them in place.
    P = model.user_factors.weight.detach().numpy()
    BU = model.user_bias.weight.detach().numpy()
    Q = model.item_factors.weight.detach().numpy()
    BI = model.item_bias.weight.detach().numpy()
    MU = model.global_bias.weight.detach().numpy()
    learn_mu = model.global_bias.weight.requires_grad
    p, bu = P[0], BU[0]  # (dim,), (1,)
    touched = np.unique(items_all)
    distinct = len(touched) == n  # no item twice on the device, so none twice in a batch
    q_before, b_before = Q[touched].copy(), BI[touched].copy()
    mu_before = MU.copy()
    reg2 = np.float32(2.0 * cfg.reg)
    lr_g, lr_l = np.float32(cfg.lr_global), np.float32(cfg.lr_local)
    wd = np.float32(cfg.private_weight_decay)
    two = np.float32(2.0)
    total, count = 0.0, 0  # a float64 sum of float32 batch sums, as train_device's
    # train_device seeds torch's global RNG from the generator first (dropout masks).
    torch.randint(0, 2**62, (1,), generator=generator)
    for _ in range(cfg.epochs):
        if steps == 0:
            break
        order = torch.randperm(n, generator=generator).numpy()
        for start in range(0, n, cfg.batch_size):
            if steps == 0:
                break
            steps -= 1
            idx = order[start : start + cfg.batch_size]
            items, r = items_all[idx], ratings_all[idx]
            q, b = Q[items], BI[items, 0]
            err = (q @ p + b) + (bu[0] + MU[0, 0]) - r
            loss = err * err
            if cfg.reg:
                pen = (p @ p + bu[0] * bu[0]) + ((q * q).sum(-1) + b * b)
                loss = loss + np.float32(cfg.reg) * pen
            total += float(loss.sum(dtype=np.float32))
            count += len(idx)
            g = two * err  # d loss_i / d score_i
            k = np.float32(len(idx))
            grad_p = g @ q + reg2 * k * p
            grad_bu = g.sum(dtype=np.float32) + reg2 * k * bu[0]
            grad_q = g[:, None] * p[None, :] + reg2 * q
            grad_b = g + reg2 * b
            if distinct:
                rows_q, rows_b, at = grad_q, grad_b, items
            else:  # an item may be twice in one batch: its row takes every example's
                uniq, inverse = np.unique(items, return_inverse=True)
                rows_q = np.zeros((len(uniq), Q.shape[1]), dtype=np.float32)
                rows_b = np.zeros(len(uniq), dtype=np.float32)
                np.add.at(rows_q, inverse, grad_q)
                np.add.at(rows_b, inverse, grad_b)
                at = uniq
            # Every gradient above was taken at the pre-step values; now step them all.
            if learn_mu:
                MU[0, 0] -= lr_g * g.sum(dtype=np.float32)
            Q[at] -= lr_g * rows_q
            BI[at, 0] -= lr_g * rows_b
            if wd:
                grad_p = grad_p + wd * p
                grad_bu = grad_bu + wd * bu[0]
            p -= lr_l * grad_p
            bu[0] -= lr_l * grad_bu
    q_update, b_update = np.zeros_like(Q), np.zeros_like(BI)
    q_update[touched] = Q[touched] - q_before  # rows no example touched did not move
    b_update[touched] = BI[touched] - b_before
    moved = {
        "item_factors.weight": q_update,
        "item_bias.weight": b_update,
        "global_bias.weight": MU - mu_before,
    }
    # In the order (and with the names) of the model's global parameters.
    return {k: moved[k] for k in global_names}, total, count
