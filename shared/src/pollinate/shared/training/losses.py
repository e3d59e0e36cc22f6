"""Per-example training losses: pure functions ``loss(model, batch, generator) -> (B,)``.

Every loss returns one value per example, so Opacus can clip per example; use
``loss.sum()`` with ``loss_reduction="sum"`` under DP-SGD. Negatives are drawn from
the explicit ``generator``, never from a global RNG.

``reg`` adds ``reg * model.penalty(batch, items)``: the squared L2 norm of the rows an
example touches (its user's rows and the scored items'), as in Surprise's SVD.

``bpr``, ``sampled_softmax`` and ``mse`` score through the model's modules and work
under Opacus's ``GradSampleModule`` (pass the wrapped or the inner model).
``softmax`` (the whole catalogue) and ``shared_softmax`` (negatives shared by the batch)
read the item tables directly: they are for central training only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import Batch, RecModel


class LossFn(Protocol):
    def __call__(
        self, model: nn.Module, batch: Batch, generator: torch.Generator | None
    ) -> torch.Tensor: ...


def unwrap(model: nn.Module) -> RecModel:
    """The :class:`RecModel` inside an Opacus ``GradSampleModule`` (or the model itself).

    The wrapper only forwards sub-modules, not methods; the hooks that collect
    per-example gradients sit on the sub-modules, so calling the inner model is enough.
    """
    inner = getattr(model, "_module", model)
    if not isinstance(inner, RecModel):
        raise ConfigError(f"expected a RecModel, got {type(inner).__name__}")
    return inner


def _penalty(model: RecModel, batch: Batch, items: torch.Tensor, reg: float) -> torch.Tensor:
    if reg == 0.0:
        return torch.zeros((), device=items.device)
    pen = getattr(model, "penalty", None)
    if pen is None:
        raise ConfigError(f"model {model.name!r} has no penalty(); use reg=0")
    return reg * pen(batch, items)


def _scored(
    model: RecModel, batch: Batch, items: torch.Tensor, reg: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores of ``items`` and ``reg`` times the penalty, from one lookup of each
    table where the model offers it (``score_and_penalty``): a module called once per
    forward pass is one per-example gradient under Opacus, and ghost clipping allows it."""
    joint = getattr(model, "score_and_penalty", None)
    if reg == 0.0 or joint is None:
        return model.score(batch, items), _penalty(model, batch, items, reg)
    score, pen = joint(batch, items)
    return score, reg * pen


def sample_negatives(
    n_items: int, shape: tuple[int, ...], generator: torch.Generator | None
) -> torch.Tensor:
    """Uniform random item indices of ``shape``."""
    return torch.randint(0, n_items, shape, generator=generator)


def mse(
    model: nn.Module, batch: Batch, generator: torch.Generator | None = None, *, reg: float = 0.0
) -> torch.Tensor:
    """Squared rating error plus ``reg`` times the touched rows' squared norms."""
    m = unwrap(model)
    if "rating" not in batch:
        raise ConfigError("the mse loss needs ratings; implicit data needs a ranking loss")
    score, pen = _scored(m, batch, batch["item"], reg)
    err = score - batch["rating"]
    return err.pow(2) + pen


def bpr(
    model: nn.Module,
    batch: Batch,
    generator: torch.Generator | None = None,
    *,
    reg: float = 0.0,
    n_negatives: int = 1,
) -> torch.Tensor:
    """Bayesian personalised ranking against ``n_negatives`` uniform negatives (mean)."""
    m = unwrap(model)
    pos = batch["item"]
    neg = sample_negatives(m.n_items, (pos.shape[0], n_negatives), generator)
    items = torch.cat([pos[:, None], neg], dim=1)
    s, pen = _scored(m, batch, items, reg)
    loss = -F.logsigmoid(s[:, :1] - s[:, 1:]).mean(-1)
    return loss + pen


def sampled_softmax(
    model: nn.Module,
    batch: Batch,
    generator: torch.Generator | None = None,
    *,
    reg: float = 0.0,
    n_negatives: int = 100,
) -> torch.Tensor:
    """Cross-entropy of the positive against ``n_negatives`` uniform negatives.

    Negatives equal to the positive are masked out.
    """
    m = unwrap(model)
    pos = batch["item"]
    neg = sample_negatives(m.n_items, (pos.shape[0], n_negatives), generator)
    items = torch.cat([pos[:, None], neg], dim=1)
    s, pen = _scored(m, batch, items, reg)
    s = torch.cat([s[:, :1], s[:, 1:].masked_fill(neg == pos[:, None], float("-inf"))], dim=1)
    loss = -s.log_softmax(-1)[:, 0]
    return loss + pen


def shared_softmax(
    model: nn.Module,
    batch: Batch,
    generator: torch.Generator | None = None,
    *,
    reg: float = 0.0,
    n_negatives: int = 1000,
) -> torch.Tensor:
    """Sampled softmax whose ``n_negatives`` uniform negatives are shared by the batch.

    One (B, B + M) matrix product scores every positive of the batch and the shared
    negatives; each example keeps its own positive and the negatives (those equal to
    its positive masked). Much cheaper than :func:`softmax` on large catalogues; like
    it, central training only (it reads the item tables through ``score_items``).
    """
    m = unwrap(model)
    score_items = getattr(m, "score_items", None)
    if score_items is None:
        raise ConfigError(f"model {m.name!r} has no score_items(); use sampled_softmax")
    pos = batch["item"]
    B = pos.shape[0]
    neg = sample_negatives(m.n_items, (n_negatives,), generator)
    s = score_items(batch, torch.cat([pos, neg]))
    s_neg = s[:, B:].masked_fill(neg[None, :] == pos[:, None], float("-inf"))
    logits = torch.cat([s[torch.arange(B), torch.arange(B)].unsqueeze(1), s_neg], dim=1)
    loss = -logits.log_softmax(-1)[:, 0]
    return loss + _penalty(m, batch, pos, reg)


def softmax(
    model: nn.Module, batch: Batch, generator: torch.Generator | None = None, *, reg: float = 0.0
) -> torch.Tensor:
    """Cross-entropy over the whole catalogue (central training only, not Opacus)."""
    m = unwrap(model)
    s = m.score_all(batch)
    loss = F.cross_entropy(s, batch["item"], reduction="none")
    return loss + _penalty(m, batch, batch["item"], reg)


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "mse": mse,
    "bpr": bpr,
    "sampled_softmax": sampled_softmax,
    "shared_softmax": shared_softmax,
    "softmax": softmax,
}
RATING_LOSSES = ("mse",)
RANKING_LOSSES = ("bpr", "sampled_softmax", "shared_softmax", "softmax")
#: Losses that score through module calls only, so Opacus can clip them per example.
OPACUS_LOSSES = ("mse", "bpr", "sampled_softmax")


def get_loss(name: str, **hparams: Any) -> LossFn:
    """The loss ``name`` with its hyper-parameters bound (``reg``, ``n_negatives``)."""
    try:
        fn = LOSSES[name]
    except KeyError:
        raise ConfigError(f"unknown loss {name!r}; available: {', '.join(LOSSES)}") from None
    if name in ("mse", "softmax"):
        hparams.pop("n_negatives", None)
    return partial(fn, **hparams)
