"""User-interest model: a short-term interest from the recent behaviour sequence plus a
long-term, private user vector, scored by inner product with content-aware item vectors.

User side::

    u = user_interest[u] + Encoder(hist, hist_gap)

The encoder reads the last ``L`` items (item vector + position + bucketed time-gap
embeddings) followed by one learned "next item" query slot, runs ``n_layers`` pre-norm
self-attention blocks built only from ``Embedding``, ``Linear`` and ``LayerNorm`` (all
have Opacus per-example gradient samplers), and returns the query slot's output. The
last block attends from the query slot only, which is all the score needs.

Item side::

    v_i = item_emb[i] + W g_i          b_i = item_bias[i] + w g_i

where ``g_i`` are the item's content features (genres). A new item with no
interactions keeps a near-zero embedding and is scored through its genres; a new user
(no history, zero ``user_interest``) gets the encoder's output on an empty sequence,
which learns a popularity-like default.

Score: ``μ + b_u + b_i + u · v_i``. Local: ``user_interest``, ``user_bias``. Global:
everything else.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from pollinate.shared.errors import ModelError
from pollinate.shared.models.base import Batch, RecModel, register_model

#: Number of time-gap buckets (index 0 is reserved for padding); see
#: :func:`pollinate.shared.training.examples.gap_buckets`.
N_GAP_BUCKETS = 32


class _AttentionBlock(nn.Module):
    """A pre-norm transformer block made of layers Opacus can differentiate per example."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise ModelError(f"dim ({dim}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, 2 * dim)
        self.ff2 = nn.Linear(2 * dim, dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor, last_only: bool) -> torch.Tensor:
        """``x`` (B, T, d); ``key_mask`` (B, T) True where a position may be attended."""
        B, T, d = x.shape
        h = self.n_heads
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        if last_only:
            q = q[:, -1:]
            x = x[:, -1:]
        q = q.reshape(B, -1, h, d // h).transpose(1, 2)
        k = k.reshape(B, T, h, d // h).transpose(1, 2)
        v = v.reshape(B, T, h, d // h).transpose(1, 2)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(d // h)
        att = att.masked_fill(~key_mask[:, None, None, :], float("-inf")).softmax(-1)
        ctx = (self.drop(att) @ v).transpose(1, 2).reshape(B, -1, d)
        x = x + self.drop(self.out(ctx))
        return x + self.drop(self.ff2(torch.relu(self.ff1(self.norm2(x)))))


@register_model("interest")
class InterestModel(RecModel):
    """Short-term (sequence encoder) + long-term (local vector) user interest.

    Args:
        n_users: number of users (1 on a device, which holds user 0).
        n_items: catalogue size; ``n_items`` is also the history padding index.
        item_genres: (n_items, G) content features, or ``None``.
        dim: latent dimension.
        history_len: longest history the encoder reads (``L``).
        n_layers: attention blocks.
        n_heads: attention heads.
        dropout: dropout inside the encoder (training mode only).
        init_std: standard deviation of the item embedding initialisation.
        global_mean: initial ``μ`` (the training mean for ratings, 0 for ranking).
        generator: RNG of the initialisation (the global one when ``None``).
    """

    LOCAL_PREFIXES = ("user_interest", "user_bias")
    ENCODER_PREFIXES = ("genre_proj", "pos_emb", "gap_emb", "query", "blocks", "out_norm")
    item_genres: torch.Tensor

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        item_genres: np.ndarray | torch.Tensor | None = None,
        dim: int = 64,
        history_len: int = 50,
        n_layers: int = 1,
        n_heads: int = 1,
        dropout: float = 0.2,
        init_std: float = 0.02,
        global_mean: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_users < 1 or n_items < 1 or dim < 1:
            raise ModelError(f"need n_users, n_items, dim >= 1; got {n_users}, {n_items}, {dim}")
        if history_len < 1 or n_layers < 1:
            raise ModelError(
                f"history_len and n_layers must be >= 1, got {history_len}, {n_layers}"
            )
        self.n_users = n_users
        self.n_items = n_items
        self.dim = dim
        self.history_len = history_len
        pad = n_items
        self.item_emb = nn.Embedding(n_items + 1, dim)
        self.item_bias = nn.Embedding(n_items + 1, 1)
        genres = _genre_table(item_genres, n_items)
        self.register_buffer("item_genres", genres, persistent=False)
        self.genre_proj = (
            nn.Linear(genres.shape[1], dim + 1, bias=False) if genres.shape[1] else None
        )
        self.pos_emb = nn.Embedding(history_len + 1, dim)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, dim)
        self.query = nn.Embedding(1, dim)
        self.blocks = nn.ModuleList(_AttentionBlock(dim, n_heads, dropout) for _ in range(n_layers))
        self.out_norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        self.user_interest = nn.Embedding(n_users, dim)
        self.user_bias = nn.Embedding(n_users, 1)
        self.global_bias = nn.Embedding(1, 1)
        with torch.no_grad():
            for emb in (self.item_emb, self.pos_emb, self.gap_emb, self.query):
                nn.init.normal_(emb.weight, std=init_std, generator=generator)
            self.item_emb.weight[pad].zero_()
            self.item_bias.weight.zero_()
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, std=init_std, generator=generator)
                    if module.bias is not None:
                        module.bias.zero_()
            self.user_interest.weight.zero_()
            self.user_bias.weight.zero_()
            self.global_bias.weight.fill_(float(global_mean))

    # ----------------------------------------------------------------- item side
    def _item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        """Item vectors (..., d) of item indices of any shape, through modules."""
        vec = self.item_emb(items)
        if self.genre_proj is not None:
            vec = vec + self.genre_proj(self.item_genres[items])[..., :-1]
        return vec

    def _item_vectors_and_bias(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(vector (..., d), bias (...)) of item indices of any shape, through modules."""
        vec = self.item_emb(items)
        bias = self.item_bias(items).squeeze(-1)
        if self.genre_proj is not None:
            g = self.genre_proj(self.item_genres[items])
            vec = vec + g[..., :-1]
            bias = bias + g[..., -1]
        return vec, bias

    def _item_table(self, items: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectors and biases of ``items`` (all real items when ``None``), read from the
        weights directly (no Opacus)."""
        idx = torch.arange(self.n_items) if items is None else items
        vec = self.item_emb.weight[idx]
        bias = self.item_bias.weight[idx, 0]
        if self.genre_proj is not None:
            g = self.item_genres[idx] @ self.genre_proj.weight.T
            vec = vec + g[:, :-1]
            bias = bias + g[:, -1]
        return vec, bias

    # ----------------------------------------------------------------- user side
    def short_term(self, batch: Batch) -> torch.Tensor:
        """Encoder output for each example's history, (B, d)."""
        user = batch["user"]
        B = user.shape[0]
        hist = batch.get("hist")
        if hist is None or hist.shape[1] == 0:
            hist = user.new_full((B, 0), self.n_items)
            gap = user.new_zeros((B, 0))
        else:
            gap = batch["hist_gap"]
        T = hist.shape[1]
        if self.history_len < T:
            raise ModelError(
                f"history of length {T} is longer than the model's history_len "
                f"{self.history_len}; build examples with history_len={self.history_len}"
            )
        zeros = torch.zeros_like(user).unsqueeze(1)
        pos = torch.arange(self.history_len - T, self.history_len + 1, device=user.device)
        x = self.query(zeros)
        key_mask = torch.ones_like(zeros, dtype=torch.bool)
        if T:
            # Only modules whose output reaches the loss may be called: Opacus pairs each
            # forward call with a backward one.
            valid = hist != self.n_items
            x = torch.cat([self._item_vectors(hist) * valid.unsqueeze(-1), x], dim=1)
            x = x + self.gap_emb(torch.cat([gap, zeros], dim=1))
            key_mask = torch.cat([valid, key_mask], dim=1)
        x = self.drop(x + self.pos_emb(pos.expand(B, -1)))
        for i, block in enumerate(self.blocks):
            x = block(x, key_mask, last_only=i == len(self.blocks) - 1)
        return self.out_norm(x[:, -1])

    def _user_terms(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        user = batch["user"]
        u = self.user_interest(user) + self.short_term(batch)
        offset = self.user_bias(user).squeeze(-1) + self.global_bias(
            torch.zeros_like(user)
        ).squeeze(-1)
        return u, offset

    # ----------------------------------------------------------------- scoring
    def score(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        u, offset = self._user_terms(batch)
        v, b = self._item_vectors_and_bias(items)
        if items.dim() == 1:
            return (u * v).sum(-1) + b + offset
        return torch.einsum("bd,bmd->bm", u, v) + b + offset.unsqueeze(-1)

    def score_items(self, batch: Batch, items: torch.Tensor | None = None) -> torch.Tensor:
        """Scores of the same candidates ``items`` (M,) for every example, (B, M); all
        items when ``None``. Differentiable, but reads the item tables directly:
        central use only."""
        u, offset = self._user_terms(batch)
        v, b = self._item_table(items)
        return u @ v.T + b + offset.unsqueeze(-1)

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.score_items(batch)

    def penalty(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        """Per-example squared L2 norm of the user's rows and the touched item rows, (B,)."""
        user = batch["user"]
        pen = self.user_interest(user).pow(2).sum(-1) + self.user_bias(user).pow(2).sum(-1)
        item_pen = self.item_emb(items).pow(2).sum(-1) + self.item_bias(items).pow(2).sum(-1)
        if items.dim() > 1:
            item_pen = item_pen.sum(-1)
        return pen + item_pen


def _genre_table(item_genres: np.ndarray | torch.Tensor | None, n_items: int) -> torch.Tensor:
    """(n_items + 1, G) float table with a zero padding row; G = 0 without genres."""
    if item_genres is None:
        return torch.zeros(n_items + 1, 0)
    g = torch.as_tensor(np.asarray(item_genres), dtype=torch.float32)
    if g.dim() != 2 or g.shape[0] != n_items:
        raise ModelError(f"item_genres must have shape ({n_items}, G), got {tuple(g.shape)}")
    return torch.cat([g, g.new_zeros(1, g.shape[1])], dim=0)
