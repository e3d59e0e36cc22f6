"""Turn interaction rows into model batches (the format of
:mod:`pollinate.shared.models.base`), with each example's behaviour history.

The history of a target row is the same user's rows from a *pool* that come strictly
earlier in the user's time order (:meth:`Interactions.time_order`: by timestamp, ties
in file order). The pool is ``context_rows`` when given (held-out rows are scored
against the training rows, never against each other) and ``rows`` otherwise (training
rows see their own earlier training rows). Nothing later than the target can leak in.
"""

from __future__ import annotations

import numpy as np
import torch

from pollinate.shared.data.types import Interactions
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.interest import N_GAP_BUCKETS

Examples = dict[str, torch.Tensor]


def gap_buckets(gaps: np.ndarray) -> np.ndarray:
    """Bucket non-negative gaps (seconds, or steps) as ``1 + floor(log2(1 + gap))``.

    Bucket 0 is padding; the result is clipped to ``N_GAP_BUCKETS - 1``.
    """
    g = np.log2(1.0 + np.maximum(np.asarray(gaps, dtype=np.float64), 0.0))
    return np.minimum(1 + np.floor(g).astype(np.int64), N_GAP_BUCKETS - 1)


def _time_rank(data: Interactions) -> np.ndarray:
    """Position of every row in the global (user, time) order."""
    order = data.time_order()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return rank


def build_examples(
    data: Interactions,
    rows: np.ndarray,
    *,
    context_rows: np.ndarray | None = None,
    history_len: int = 50,
) -> Examples:
    """Examples for ``rows`` (in that order), with up to ``history_len`` earlier items.

    Returns ``user``, ``item``, ``rating`` (explicit data only), ``hist`` (B, L) padded on
    the left with ``data.n_items`` and ``hist_gap`` (B, L): the bucketed gap between each
    history row and the target (seconds with timestamps, otherwise steps in the pool),
    0 on padding.
    """
    if history_len < 0:
        raise ConfigError(f"history_len must be >= 0, got {history_len}")
    rows = np.asarray(rows, dtype=np.int64)
    out: Examples = {
        "user": torch.as_tensor(data.users[rows], dtype=torch.long),
        "item": torch.as_tensor(data.items[rows], dtype=torch.long),
    }
    if data.ratings is not None:
        out["rating"] = torch.as_tensor(data.ratings[rows], dtype=torch.float32)
    L = history_len
    if L == 0:
        out["hist"] = torch.empty((len(rows), 0), dtype=torch.long)
        out["hist_gap"] = torch.empty((len(rows), 0), dtype=torch.long)
        return out

    rank = _time_rank(data)
    pool = rows if context_rows is None else np.asarray(context_rows, dtype=np.int64)
    pool = pool[np.argsort(rank[pool], kind="stable")]  # grouped by user, in time order
    pool_rank = rank[pool]
    pool_users = data.users[pool]
    target_users = data.users[rows]
    # Pool rows before the target in the global order, and where the user's rows start.
    end = np.searchsorted(pool_rank, rank[rows], side="left")
    start = np.searchsorted(pool_users, target_users, side="left")
    idx = end[:, None] - L + np.arange(L)[None, :]
    valid = idx >= start[:, None]
    safe = np.where(valid, idx, 0)
    if len(pool) == 0:
        valid[:] = False
        safe[:] = 0
        pool = np.zeros(1, dtype=np.int64)
    hist = np.where(valid, data.items[pool][safe], data.n_items)
    if data.timestamps is not None:
        ts = data.timestamps.astype(np.float64)
        gaps = ts[rows][:, None] - ts[pool][safe]
    else:
        gaps = (end[:, None] - idx).astype(np.float64)
    gap = np.where(valid, gap_buckets(gaps), 0)
    out["hist"] = torch.as_tensor(hist, dtype=torch.long)
    out["hist_gap"] = torch.as_tensor(gap, dtype=torch.long)
    return out


def n_examples(examples: Examples) -> int:
    return int(examples["user"].shape[0])


def take(examples: Examples, idx: torch.Tensor | np.ndarray | slice) -> Examples:
    """The examples at ``idx``, every entry indexed alike."""
    if isinstance(idx, np.ndarray):
        idx = torch.as_tensor(idx, dtype=torch.long)
    return {k: v[idx] for k, v in examples.items()}
