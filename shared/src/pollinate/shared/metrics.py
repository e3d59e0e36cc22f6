"""Rating and ranking metrics, computed as additive sums for federated aggregation.

Every metric here is a mean over rows (ratings, or users). Each evaluation therefore
produces *sums and a count*, which a device can send and a server can add up
(:func:`add_sums`) before finalizing them into the same metric names
(:func:`rating_metrics`, :func:`ranking_metrics_from_sums`). Centralized evaluation
uses exactly the same code, so the two agree to floating-point rounding.

Rating metrics
==============

Over all rated pairs with prediction ``p`` and target ``t``::

    se_sum = Σ (p - t)²      ae_sum = Σ |p - t|      count = number of pairs
    rmse   = sqrt(se_sum / count)      mae = ae_sum / count

Ranking metrics (full ranking, RecBole conventions)
===================================================

Each row of ``scores`` ranks *all* ``n_items`` items of one user, except the
*excluded* items (the user's training items, and the validation item when testing),
which are never ranked: they are placed after every other item, cannot be a hit and
never appear in a top-K list. ``R`` is the set of relevant items of the row (one item
in the leave-last-out case), ``rank(i)`` the 1-based position of item ``i`` in the
ranking defined below, and ``hits@K = |{i ∈ R : rank(i) ≤ K, i not excluded}|``.

* ``HR@K``     = 1 if ``hits@K > 0`` else 0.
* ``Recall@K`` = ``hits@K / |R|``. A relevant item that is also excluded still counts
  in ``|R|`` (it is a miss); this is RecBole's behaviour when a positive is masked.
  With one relevant item, ``Recall@K == HR@K``.
* ``MRR@K``    = ``1 / rank`` of the first relevant item if that rank is ``≤ K``,
  else 0.
* ``NDCG@K``   = ``DCG@K / IDCG@K`` with binary gains:
  ``DCG@K = Σ_{i ∈ R, rank(i) ≤ K} 1 / log2(rank(i) + 1)`` and
  ``IDCG@K = Σ_{r=1}^{min(|R|, K)} 1 / log2(r + 1)``. For one relevant item at
  rank 2, ``NDCG = 1 / log2(3)``.

Each of these is summed over users (``"hr@10_sum"`` ...) next to ``"count"``, the
number of users; the metric is ``sum / count``. A row with no relevant item is an
error (RecBole drops such users before evaluating; do the same).

Tie policy (deterministic and pessimistic)
------------------------------------------

Scores are compared after conversion to float32 (``-0.0`` equals ``0.0``; NaN in
a non-excluded score is an error; ``±inf`` are ordinary scores).

* **Accuracy metrics** (HR, Recall, MRR, NDCG) use the *pessimistic* order: higher
  score first; among equal scores every non-relevant item comes before every relevant
  item; remaining ties go by lower item index. With one relevant item ``t``::

      rank(t) = 1 + #{i ≠ t non-excluded : score_i > score_t}
                  + #{i ≠ t non-excluded : score_i == score_t}
              = #{i non-excluded : score_i ≥ score_t}

  which is computed directly without sorting. So a relevant item never profits from a
  tie, and a model that outputs constant scores gets ``rank = number of rankable
  items`` (HR@K = 0 unless almost everything is excluded), never perfect metrics.
  RecBole uses ``torch.topk`` for the same metrics, whose order among ties is not
  specified; without ties at the relevant items the two agree exactly.
* **Top-K lists** (coverage, novelty, diversity), i.e. what would actually be
  recommended, must not depend on the hidden targets: they order by higher score
  first, then by *lower item index* (what a stable descending sort gives). A list holds
  ``min(K, number of non-excluded items)`` items.

Both orders are realised exactly by ``torch.topk`` over unique 64-bit integer keys
(the float32 bits mapped to a monotone integer, then the tie-breakers), so results
are identical on any device and for any batching.

Beyond-accuracy metrics
=======================

* ``Coverage@K`` = |union over all evaluated users of their top-K lists| / n_items.
  It is not a mean over users, so it is **not additive**: the evaluator keeps, for
  every item, the best list position at which it was ever recommended.
  :func:`ranking_metrics_from_sums` omits it because a federated version would
  require every device to reveal its recommended items to the server.
* ``Novelty@K``  = mean over users of the mean self-information of the items in
  the top-K list, ``self_info(i) = -log2((pop_i + 1) / (n_popularity_users + 1))``,
  where ``pop_i`` is the number of training interactions (or users) of item ``i``.
  The add-one smoothing keeps items unseen in training finite (and an item seen by
  every user at 0 bits). ``n_popularity_users`` defaults to ``sum(pop)``, which makes
  ``pop_i / n`` the item's share of all interactions. Only given ``item_popularity``.
* ``Diversity@K`` (intra-list diversity) = mean over users of the mean over the
  unordered pairs ``{i, j}`` of the top-K list of ``1 - cos(g_i, g_j)``, where
  ``g_i`` is the genre vector of item ``i``. An item with an all-zero genre vector has
  similarity 0 with every item (so each of its pairs adds 1). A list with fewer than
  two items (only possible when fewer than two items are not excluded, or ``K = 1``)
  has diversity 0. Only given ``item_genres``; otherwise the keys are omitted.

Novelty and diversity are means over users, hence additive like the accuracy
metrics (``"novelty@10_sum"``, ``"diversity@10_sum"``). An empty list (all items
excluded) has novelty 0.

Everything runs as torch operations on whole ``(B, n_items)`` batches; large batches
are processed in row blocks of about four million scores to bound memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import TypeAlias

import numpy as np
import torch

from pollinate.shared.errors import PollinateError

__all__ = [
    "RANKING_SUM_NAMES",
    "RATING_KEYS",
    "MetricError",
    "RankingEvaluator",
    "add_sums",
    "exclusion_mask",
    "ranking_metrics_from_sums",
    "rating_metrics",
    "rating_sums",
]

ArrayLike: TypeAlias = np.ndarray | torch.Tensor

RATING_KEYS = ("se_sum", "ae_sum", "count")
"""The keys of :func:`rating_sums`."""

RANKING_SUM_NAMES = ("hr", "recall", "ndcg", "mrr", "novelty", "diversity")
"""Per-user ranking metrics that :meth:`RankingEvaluator.sums` sums as ``"{name}@{K}_sum"``."""

_ACCURACY_NAMES = ("hr", "recall", "ndcg", "mrr")
_SUM_KEY = re.compile(r"^(" + "|".join(RANKING_SUM_NAMES) + r")@(\d+)_sum$")
_CHUNK_ELEMS = 1 << 22  # scores per row block inside RankingEvaluator.add
_INT32_MIN = -(2**31)  # below the key of every float32 other than NaN, -inf included


class MetricError(PollinateError, ValueError):
    """Metric inputs are malformed, or there is nothing to average."""


# --------------------------------------------------------------------------- helpers


def _as_tensor(x: object, name: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError) as exc:
        raise MetricError(f"{name} must be a numpy array or a torch tensor: {exc}") from exc


def _is_integer(t: torch.Tensor) -> bool:
    return not t.dtype.is_floating_point and not t.dtype.is_complex and t.dtype != torch.bool


def _count(sums: Mapping[str, float], what: str) -> float:
    if "count" not in sums:
        raise MetricError(f"{what}: the sums have no 'count' key (got {sorted(sums)})")
    count = float(sums["count"])
    if not math.isfinite(count) or count <= 0:
        raise MetricError(
            f"{what}: count is {count}, so there is nothing to average; evaluate at least "
            "one row before finalizing"
        )
    return count


def _finite(sums: Mapping[str, float], key: str, what: str) -> float:
    value = float(sums[key])
    if not math.isfinite(value):
        raise MetricError(f"{what}: {key} is {value}; sums must be finite")
    return value


def add_sums(*parts: Mapping[str, float]) -> dict[str, float]:
    """Add sums dicts key by key (what the server does with the devices' replies).

    All parts must have the same keys: a missing key means that two parts come from
    differently configured evaluations, which cannot be combined.
    """
    if not parts:
        raise MetricError("add_sums needs at least one sums dict")
    keys = set(parts[0])
    for n, part in enumerate(parts[1:], start=1):
        if set(part) != keys:
            raise MetricError(
                f"add_sums: part {n} has keys {sorted(part)}, but part 0 has {sorted(keys)}; "
                "only sums of identically configured evaluations can be added"
            )
    return {key: math.fsum(float(part[key]) for part in parts) for key in parts[0]}


# --------------------------------------------------------------------------- ratings


def rating_sums(pred: ArrayLike, target: ArrayLike) -> dict[str, float]:
    """Squared-error and absolute-error sums and the count of rated pairs.

    ``pred`` and ``target`` must hold the same number of values in the same shape,
    up to size-1 dimensions (``(B, 1)`` and ``(B,)`` match; nothing broadcasts). Empty
    inputs give zero sums and ``count == 0``, which :func:`add_sums` accepts.
    """
    p = _as_tensor(pred, "pred")
    t = _as_tensor(target, "target")
    if p.squeeze().shape != t.squeeze().shape:
        raise MetricError(
            f"pred has shape {tuple(p.shape)} but target {tuple(t.shape)}; they must match "
            "(no broadcasting)"
        )
    p = p.reshape(-1).to(device="cpu", dtype=torch.float64)
    t = t.reshape(-1).to(device="cpu", dtype=torch.float64)
    for name, v in (("pred", p), ("target", t)):
        if not bool(torch.isfinite(v).all()):
            raise MetricError(f"{name} contains NaN or infinite values")
    diff = p - t
    return {
        "se_sum": float((diff * diff).sum()),
        "ae_sum": float(diff.abs().sum()),
        "count": float(p.numel()),
    }


def rating_metrics(sums: Mapping[str, float]) -> dict[str, float]:
    """``{"rmse", "mae"}`` from (possibly added-up) :func:`rating_sums`.

    Raises :class:`MetricError` when ``count`` is 0 or a key is missing.
    """
    missing = [k for k in RATING_KEYS if k not in sums]
    if missing:
        raise MetricError(f"rating sums lack {missing}; expected keys {RATING_KEYS}")
    count = _count(sums, "rating_metrics")
    se = _finite(sums, "se_sum", "rating_metrics")
    ae = _finite(sums, "ae_sum", "rating_metrics")
    if se < 0 or ae < 0:
        raise MetricError(f"rating_metrics: error sums must be >= 0 (se={se}, ae={ae})")
    return {"rmse": math.sqrt(se / count), "mae": ae / count}


# --------------------------------------------------------------------------- ranking


def exclusion_mask(n_rows: int, n_items: int, rows: ArrayLike, items: ArrayLike) -> torch.Tensor:
    """A ``(n_rows, n_items)`` bool mask, True at every ``(rows[j], items[j])``.

    Typical use: the training interactions of the users of a batch, with ``rows`` the
    users' positions in the batch. Duplicate pairs are fine.
    """
    r = _as_tensor(rows, "rows").reshape(-1)
    c = _as_tensor(items, "items").reshape(-1)
    if r.numel() != c.numel():
        raise MetricError(f"rows has {r.numel()} entries but items {c.numel()}")
    if r.numel() and not (_is_integer(r) and _is_integer(c)):
        raise MetricError("rows and items must be integer indices")
    mask = torch.zeros((n_rows, n_items), dtype=torch.bool)
    if r.numel() == 0:
        return mask
    r = r.to(device="cpu", dtype=torch.int64)
    c = c.to(device="cpu", dtype=torch.int64)
    if int(r.min()) < 0 or int(r.max()) >= n_rows:
        raise MetricError(f"rows must lie in [0, {n_rows}); got [{int(r.min())}, {int(r.max())}]")
    if int(c.min()) < 0 or int(c.max()) >= n_items:
        raise MetricError(f"items must lie in [0, {n_items}); got [{int(c.min())}, {int(c.max())}]")
    mask[r, c] = True
    return mask


def _sortable_key(s: torch.Tensor) -> torch.Tensor:
    """Map float32 scores to int64 with the same order (ties stay ties)."""
    bits = s.contiguous().view(torch.int32)
    bits = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return bits.to(torch.int64)


def ranking_metrics_from_sums(
    sums: Mapping[str, float], ks: Sequence[int] | None = None
) -> dict[str, float]:
    """Finalize additive ranking sums into ``"hr@K"``, ``"recall@K"``, ``"ndcg@K"``,
    ``"mrr@K"`` and, where summed, ``"novelty@K"`` and ``"diversity@K"``.

    ``ks`` defaults to every K found in the keys. Coverage is not included: it is not
    a mean over users, and computing it federatedly would require devices to reveal
    their recommended items (see the module docstring).
    """
    count = _count(sums, "ranking_metrics_from_sums")
    if ks is None:
        found = {int(m.group(2)) for key in sums if (m := _SUM_KEY.match(key))}
        if not found:
            raise MetricError(f"no ranking sums such as 'hr@10_sum' among {sorted(sums)}")
        ks = sorted(found)
    out: dict[str, float] = {}
    for k in ks:
        for name in RANKING_SUM_NAMES:
            key = f"{name}@{k}_sum"
            if key in sums:
                out[f"{name}@{k}"] = _finite(sums, key, "ranking_metrics_from_sums") / count
            elif name in _ACCURACY_NAMES:
                raise MetricError(f"ranking sums lack {key!r} (have {sorted(sums)})")
    return out


class RankingEvaluator:
    """Accumulates full-ranking metrics over batches of users.

    ``add`` any number of batches, then read ``sums()`` (additive, for federated
    aggregation) or ``result()`` (final metrics, coverage included). See the module
    docstring for the exact definitions and the tie policy.

    Args:
        n_items: number of items; ``scores`` have this many columns.
        ks: cutoffs, each in ``[1, n_items]``; stored sorted and without duplicates.
        item_popularity: ``(n_items,)`` non-negative training interaction (or user)
            counts; enables ``novelty@K``.
        n_popularity_users: the normalizer of the popularity (number of training users);
            defaults to ``item_popularity.sum()``. Must be ``>= max(item_popularity)``.
        item_genres: ``(n_items, n_genres)`` genre vectors (usually 0/1); enables
            ``diversity@K``.
    """

    def __init__(
        self,
        n_items: int,
        ks: Sequence[int] = (10, 20),
        *,
        item_popularity: np.ndarray | None = None,
        n_popularity_users: int | None = None,
        item_genres: np.ndarray | None = None,
    ) -> None:
        if isinstance(n_items, bool) or not isinstance(n_items, int | np.integer):
            raise MetricError(f"n_items must be an int, got {type(n_items).__name__}")
        n_items = int(n_items)
        if not 1 <= n_items < 2**30:
            raise MetricError(f"n_items must be in [1, 2**30), got {n_items}")
        ks_list = [int(k) for k in ks]
        if not ks_list:
            raise MetricError("ks must name at least one cutoff K")
        bad = [k for k in ks_list if not 1 <= k <= n_items]
        if bad:
            raise MetricError(f"every K must be in [1, n_items={n_items}]; got {bad}")
        self.n_items = n_items
        self.ks: tuple[int, ...] = tuple(sorted(set(ks_list)))
        self._kmax = self.ks[-1]

        self._self_info: torch.Tensor | None = None
        if item_popularity is not None:
            pop = np.asarray(item_popularity, dtype=np.float64)
            if pop.shape != (n_items,):
                raise MetricError(f"item_popularity has shape {pop.shape}, expected ({n_items},)")
            if not np.isfinite(pop).all() or (pop < 0).any():
                raise MetricError("item_popularity must be finite and non-negative")
            n_pop = float(pop.sum()) if n_popularity_users is None else float(n_popularity_users)
            if not math.isfinite(n_pop) or n_pop < pop.max():
                raise MetricError(
                    f"n_popularity_users={n_pop} is smaller than the largest popularity "
                    f"{pop.max()}; pass the number of training users (or interactions) that "
                    "the popularity counts are out of"
                )
            self._self_info = torch.from_numpy(-np.log2((pop + 1.0) / (n_pop + 1.0)))
        elif n_popularity_users is not None:
            raise MetricError("n_popularity_users needs item_popularity")

        self._genres: torch.Tensor | None = None
        self._genre_nonzero: torch.Tensor | None = None
        if item_genres is not None:
            g = np.asarray(item_genres, dtype=np.float64)
            if g.ndim != 2 or g.shape[0] != n_items:
                raise MetricError(
                    f"item_genres has shape {g.shape}, expected ({n_items}, n_genres)"
                )
            if not np.isfinite(g).all():
                raise MetricError("item_genres must be finite")
            norm = np.linalg.norm(g, axis=1)
            nonzero = norm > 0
            unit = np.divide(g, norm[:, None], out=np.zeros_like(g), where=nonzero[:, None])
            self._genres = torch.from_numpy(unit)
            self._genre_nonzero = torch.from_numpy(nonzero.astype(np.float64))

        self.reset()

    # ------------------------------------------------------------------ state

    def reset(self) -> None:
        """Forget everything added so far."""
        self._sums: dict[str, float] = dict.fromkeys(self._sum_keys(), 0.0)
        # Best (0-based) top-K list position at which each item was recommended;
        # kmax means never. coverage@K counts the items with best position < K.
        self._best_pos = torch.full((self.n_items,), self._kmax, dtype=torch.int64)

    def _sum_keys(self) -> list[str]:
        names = [*_ACCURACY_NAMES]
        if self._self_info is not None:
            names.append("novelty")
        if self._genres is not None:
            names.append("diversity")
        return [f"{n}@{k}_sum" for k in self.ks for n in names] + ["count"]

    @property
    def count(self) -> int:
        """Number of users (rows) added so far."""
        return int(self._sums["count"])

    # ------------------------------------------------------------------ adding

    def add(
        self,
        scores: ArrayLike,
        targets: ArrayLike,
        exclude: ArrayLike | None = None,
    ) -> None:
        """Add one batch of users.

        Args:
            scores: ``(B, n_items)`` real scores, higher is better (any device).
            targets: ``(B,)`` integer item index, one relevant item per row (the
                leave-last-out case); or a ``(B, n_items)`` bool mask of relevant
                items, at least one per row.
            exclude: ``(B, n_items)`` bool mask of items that must not be ranked (the
                user's training items, and the validation item when testing).
        """
        s = _as_tensor(scores, "scores")
        if s.ndim != 2 or s.shape[1] != self.n_items:
            raise MetricError(
                f"scores must have shape (B, n_items={self.n_items}), got {tuple(s.shape)}"
            )
        if s.dtype == torch.bool or s.dtype.is_complex:
            raise MetricError(f"scores must be real numbers, got {s.dtype}")
        B = s.shape[0]
        device = s.device

        ex: torch.Tensor | None = None
        if exclude is not None:
            ex = _as_tensor(exclude, "exclude")
            if ex.dtype != torch.bool or tuple(ex.shape) != (B, self.n_items):
                raise MetricError(
                    f"exclude must be a bool mask of shape {(B, self.n_items)}, got "
                    f"{ex.dtype} {tuple(ex.shape)} (use exclusion_mask or .bool())"
                )
            ex = ex.to(device)

        t = _as_tensor(targets, "targets")
        if t.ndim == 1:
            if not _is_integer(t):
                raise MetricError(
                    f"1-D targets must be integer item indices, got {t.dtype}; a bool mask "
                    "of relevant items must have shape (B, n_items)"
                )
            if t.shape[0] != B:
                raise MetricError(f"targets has {t.shape[0]} rows but scores has {B}")
            t = t.to(device=device, dtype=torch.int64)
            if B and (int(t.min()) < 0 or int(t.max()) >= self.n_items):
                raise MetricError(f"target items must lie in [0, {self.n_items})")
            single = True
        elif t.ndim == 2:
            if t.dtype != torch.bool or tuple(t.shape) != (B, self.n_items):
                raise MetricError(
                    f"2-D targets must be a bool mask of shape {(B, self.n_items)}, got "
                    f"{t.dtype} {tuple(t.shape)}"
                )
            t = t.to(device)
            empty = ~t.any(dim=1)
            if bool(empty.any()):
                row = int(torch.nonzero(empty)[0, 0])
                raise MetricError(
                    f"row {row} has no relevant item; drop users without test items "
                    "before evaluating"
                )
            single = False
        else:
            raise MetricError(f"targets must be 1-D or 2-D, got shape {tuple(t.shape)}")
        if B == 0:
            return

        rows = max(1, _CHUNK_ELEMS // self.n_items)
        with torch.no_grad():
            for start in range(0, B, rows):
                stop = min(B, start + rows)
                self._add_block(
                    s[start:stop],
                    t[start:stop],
                    None if ex is None else ex[start:stop],
                    single,
                )

    def _add_block(
        self, scores: torch.Tensor, t: torch.Tensor, ex: torch.Tensor | None, single: bool
    ) -> None:
        N, kmax = self.n_items, self._kmax
        s = scores.to(torch.float32) + 0.0  # a fresh copy; turns -0.0 into +0.0
        nan = torch.isnan(s)
        if ex is not None:
            nan &= ~ex
        if bool(nan.any()):
            raise MetricError("scores contain NaN at items that are not excluded")

        base = _sortable_key(s)
        if ex is not None:
            base.masked_fill_(ex, _INT32_MIN)  # excluded items go after everything
        rev_index = torch.arange(N - 1, -1, -1, device=s.device, dtype=torch.int64)

        # Top-K list: higher score first, then lower item index.
        top = torch.topk(base * N + rev_index, kmax, dim=1).indices
        valid = torch.ones_like(top, dtype=torch.bool) if ex is None else ~ex.gather(1, top)

        # Accuracy: hits[u, p] is True if position p (0-based) of the pessimistic
        # ranking holds a relevant, non-excluded item.
        positions = torch.arange(kmax, device=s.device)
        if single:
            target_score = s.gather(1, t[:, None])
            at_least = s >= target_score
            if ex is not None:
                at_least &= ~ex
            rank = at_least.sum(dim=1)  # counts the target itself
            if ex is not None:
                rank = torch.where(ex.gather(1, t[:, None])[:, 0], N + 1, rank)
            hits = positions[None, :] == (rank - 1)[:, None]
            n_rel = torch.ones(len(t), dtype=torch.float64)
        else:
            relevant = t if ex is None else t & ~ex
            non_rel = (~t).to(torch.int64)
            acc_top = torch.topk(base * (2 * N) + non_rel * N + rev_index, kmax, dim=1).indices
            hits = relevant.gather(1, acc_top)
            n_rel = t.sum(dim=1).to(device="cpu", dtype=torch.float64)
        del base

        self._accumulate(hits.cpu(), n_rel, top.cpu(), valid.cpu())

    def _accumulate(
        self, hits: torch.Tensor, n_rel: torch.Tensor, top: torch.Tensor, valid: torch.Tensor
    ) -> None:
        kmax = self._kmax
        sums = self._sums
        discount = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64))
        ideal = discount.cumsum(0)  # ideal[m - 1] = IDCG with m hits
        h = hits.to(torch.float64)
        cum_hits = h.cumsum(1)
        dcg = (h * discount).cumsum(1)
        any_hit = hits.any(dim=1)
        first = hits.to(torch.int64).argmax(dim=1)  # first True (0 if none)
        n_ideal = n_rel.to(torch.int64)

        v = valid.to(torch.float64)
        n_list = v.cumsum(1)  # list length at each cutoff (excluded items are last)
        positions = torch.arange(kmax).expand_as(top)
        self._best_pos.scatter_reduce_(0, top[valid], positions[valid], reduce="amin")
        novelty_cum = None
        if self._self_info is not None:
            novelty_cum = (self._self_info[top] * v).cumsum(1)
        div_vec = div_nz = None
        if self._genres is not None and self._genre_nonzero is not None:
            div_vec = (self._genres[top] * v[..., None]).cumsum(1)  # (B, kmax, n_genres)
            div_nz = (self._genre_nonzero[top] * v).cumsum(1)

        for k in self.ks:
            n_hit = cum_hits[:, k - 1]
            sums[f"hr@{k}_sum"] += float((n_hit > 0).sum())
            sums[f"recall@{k}_sum"] += float((n_hit / n_rel).sum())
            idcg = ideal[n_ideal.clamp(max=k) - 1]
            sums[f"ndcg@{k}_sum"] += float((dcg[:, k - 1] / idcg).sum())
            in_k = any_hit & (first < k)
            mrr = torch.where(in_k, 1.0 / (first + 1).to(torch.float64), 0.0)
            sums[f"mrr@{k}_sum"] += float(mrr.sum())
            length = n_list[:, k - 1]
            if novelty_cum is not None:
                sums[f"novelty@{k}_sum"] += float(
                    (novelty_cum[:, k - 1] / length.clamp(min=1)).sum()
                )
            if div_vec is not None and div_nz is not None:
                vec = div_vec[:, k - 1]
                same_sum = ((vec * vec).sum(1) - div_nz[:, k - 1]) / 2  # Σ_pairs cos
                pairs = length * (length - 1) / 2
                div = torch.where(pairs > 0, 1.0 - same_sum / pairs.clamp(min=1), 0.0)
                sums[f"diversity@{k}_sum"] += float(div.sum())
        sums["count"] += float(len(hits))

    # ------------------------------------------------------------------ reading

    def sums(self) -> dict[str, float]:
        """Additive sums: ``"{metric}@{K}_sum"`` for every per-user metric and K, and
        ``"count"`` (users). Add them with :func:`add_sums`; finalize with
        :func:`ranking_metrics_from_sums`."""
        return dict(self._sums)

    @staticmethod
    def merge_sums(*parts: Mapping[str, float]) -> dict[str, float]:
        """Same as :func:`add_sums`."""
        return add_sums(*parts)

    def merge(self, other: RankingEvaluator) -> None:
        """Add everything ``other`` has accumulated (coverage included) into ``self``.

        Both must be configured identically (n_items, ks, popularity, genres).
        """
        same = (
            self.n_items == other.n_items
            and self.ks == other.ks
            and _same(self._self_info, other._self_info)
            and _same(self._genres, other._genres)
        )
        if not same:
            raise MetricError("can only merge RankingEvaluators with identical configuration")
        self._sums = add_sums(self._sums, other._sums)
        self._best_pos = torch.minimum(self._best_pos, other._best_pos)

    def coverage(self) -> dict[str, float]:
        """``"coverage@K"`` for every K: recommended items / n_items."""
        return {f"coverage@{k}": float((self._best_pos < k).sum()) / self.n_items for k in self.ks}

    def result(self) -> dict[str, float]:
        """Final metrics: ``hr``, ``recall``, ``ndcg``, ``mrr``, ``novelty`` (with
        popularity), ``diversity`` (with genres) and ``coverage``, each ``@K`` for every K.

        Raises :class:`MetricError` if no user has been added.
        """
        out = ranking_metrics_from_sums(self._sums, self.ks)
        out.update(self.coverage())
        return out


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and bool(torch.equal(a, b))
