"""Biased matrix factorisation: r̂ = μ + b_u + b_i + p_u · q_i.

``p_u`` and ``b_u`` are private to the user (local); ``q_i``, ``b_i`` and ``μ`` are
shared (global). ``μ`` is a trainable 1×1 embedding (Opacus cannot compute per-example
gradients of a bare ``nn.Parameter``), initialised to ``global_mean``.

For the ranking task the same scorer is trained on implicit feedback with a ranking
loss; ``μ`` and ``b_u`` then shift every item of a user equally and do not change the
ranking.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pollinate.shared.errors import ModelError
from pollinate.shared.models.base import Batch, RecModel, register_model


def _check_sizes(n_users: int, n_items: int, dim: int) -> None:
    if n_users < 1 or n_items < 1:
        raise ModelError(f"need n_users >= 1 and n_items >= 1, got {n_users} and {n_items}")
    if dim < 1:
        raise ModelError(f"dim must be >= 1, got {dim}")


@register_model("mf")
class BiasedMF(RecModel):
    """Biased MF. Local: ``user_factors``, ``user_bias``. Global: the item side and ``μ``.

    Args:
        n_users: number of users (1 on a device, which holds user 0).
        n_items: catalogue size.
        dim: latent dimension ``k``.
        item_genres: accepted so every model takes the same arguments; unused here.
        init_std: standard deviation of the normal initialisation of the factors.
        global_mean: initial value of ``μ`` (set it to the training mean).
        learn_global_mean: train ``μ`` (a global parameter); when False, ``μ`` is a
            constant and the local ``b_u`` and global ``b_i`` absorb the offset. Its
            device update is ``n`` times larger than an item row's (every example
            touches it), which a plain FedAvg server step with the large learning rate
            that item rows need (user-level DP) turns into divergence.
        generator: RNG of the initialisation (the global one when ``None``).
    """

    LOCAL_PREFIXES = ("user_factors", "user_bias")

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        dim: int = 64,
        item_genres: np.ndarray | torch.Tensor | None = None,
        init_std: float = 0.1,
        global_mean: float = 0.0,
        learn_global_mean: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_sizes(n_users, n_items, dim)
        del item_genres  # MF has no content features
        self.n_users = n_users
        self.n_items = n_items
        self.dim = dim
        self.init_std = init_std
        #: MF ignores the behaviour sequence; builders may skip the history.
        self.history_len = 0
        self.user_factors = nn.Embedding(n_users, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_factors = nn.Embedding(n_items, dim)
        self.item_bias = nn.Embedding(n_items, 1)
        self.global_bias = nn.Embedding(1, 1)
        with torch.no_grad():
            nn.init.normal_(self.user_factors.weight, std=init_std, generator=generator)
            nn.init.normal_(self.item_factors.weight, std=init_std, generator=generator)
            self.user_bias.weight.zero_()
            self.item_bias.weight.zero_()
            self.global_bias.weight.fill_(float(global_mean))
        self.global_bias.weight.requires_grad_(learn_global_mean)

    def draw_private_state(self) -> dict[str, np.ndarray]:
        """The private parameters that ``__init__`` of a one-user model with this catalogue
        draws from torch's global RNG, without building the model.

        ``__init__`` draws, in order: each ``nn.Embedding``'s default N(0, 1)
        initialisation (user factors, user bias, item factors, item bias, global bias),
        then the user factors, then the item factors. Drawing the same sizes in the same
        order leaves the generator where ``__init__`` has it when it draws the user
        factors (pinned against a built model by a test); what it draws after them
        cannot change them. A device thus gets its initial state without a module tree.
        """
        for size in (self.dim, 1, self.n_items * self.dim, self.n_items, 1):
            torch.empty(size).normal_()
        factors = torch.empty(1, self.dim)
        nn.init.normal_(factors, std=self.init_std)
        return {
            "user_factors.weight": factors.numpy(),
            "user_bias.weight": np.zeros((1, 1), dtype=np.float32),
        }

    def _user_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        user = batch["user"]
        p = self.user_factors(user)
        offset = self.user_bias(user).squeeze(-1) + self.global_bias(
            torch.zeros_like(user)
        ).squeeze(-1)
        return p, offset

    def score(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        p, offset = self._user_terms(batch)
        q = self.item_factors(items)
        b = self.item_bias(items).squeeze(-1)
        if items.dim() == 1:
            return (p * q).sum(-1) + b + offset
        return torch.einsum("bd,bmd->bm", p, q) + b + offset.unsqueeze(-1)

    def score_items(self, batch: Batch, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the same candidates ``items`` (M,) for every example, (B, M); all
        items when ``None``. Differentiable, but it reads the item tables directly:
        central training and evaluation only (no per-example gradients under Opacus)."""
        p, offset = self._user_terms(batch)
        q, b = self.item_factors.weight, self.item_bias.weight[:, 0]
        if items is not None:
            q, b = q[items], b[items]
        return p @ q.T + b + offset.unsqueeze(-1)

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.score_items(batch)

    def score_and_penalty(
        self, batch: Batch, items: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`score` and :meth:`penalty` from one lookup of each table (the same values
        as the two calls). Each embedding module is then called once per forward pass:
        Opacus's hooks build each per-example gradient once instead of twice, and its
        ghost clipping, which refuses a module called twice, applies."""
        user = batch["user"]
        p = self.user_factors(user)
        bu = self.user_bias(user)
        offset = bu.squeeze(-1) + self.global_bias(torch.zeros_like(user)).squeeze(-1)
        q = self.item_factors(items)
        bi = self.item_bias(items)
        b = bi.squeeze(-1)
        if items.dim() == 1:
            score = (p * q).sum(-1) + b + offset
        else:
            score = torch.einsum("bd,bmd->bm", p, q) + b + offset.unsqueeze(-1)
        pen = p.pow(2).sum(-1) + bu.pow(2).sum(-1)
        item_pen = q.pow(2).sum(-1) + bi.pow(2).sum(-1)
        if items.dim() > 1:
            item_pen = item_pen.sum(-1)
        return score, pen + item_pen

    def penalty(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        """Per-example squared L2 norm of the rows an example touches, (B,).

        The user's row and bias, plus the rows and biases of ``items`` ((B,) or (B, M),
        summed over M), as in Surprise's SVD.
        """
        user = batch["user"]
        pen = self.user_factors(user).pow(2).sum(-1) + self.user_bias(user).pow(2).sum(-1)
        item_pen = self.item_factors(items).pow(2).sum(-1) + self.item_bias(items).pow(2).sum(-1)
        if items.dim() > 1:
            item_pen = item_pen.sum(-1)
        return pen + item_pen
