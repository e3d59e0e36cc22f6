"""Why an item was recommended: the history items whose removal would lower its score.

The contribution of a history item ``h`` to the score of a recommendation ``j`` is
defined as the leave-one-out difference

    c(h, j) = score_j(history) - score_j(history without h),

where "without h" drops every event of ``h`` and recomputes the user's side exactly as
the device would. "Because you liked X" names the liked items with the largest positive
``c``; so removing a named item lowers that recommendation's score by exactly ``c``
(the fidelity property the tests check by recomputing).

For matrix factorisation the user vector is a ridge fold-in against the item factors

    p = argmin_p  sum_h (y_h - q_h . p)^2 + lam |p - p0|^2 = A^-1 (Q_H^T y + lam p0),
    A = Q_H^T Q_H + lam I,

(``p0``: the device's trained private vector, or zero), and ``c`` has the closed form
of ridge leave-one-out (Sherman-Morrison):

    c(h, j) = q_j . A^-1 q_h * e_h / (1 - l_h),  e_h = y_h - q_h . p,  l_h = q_h . A^-1 q_h.

Other scorers (content, the interest model) compute ``c`` by rescoring without ``h``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class FoldIn:
    """A folded-in user vector and what its leave-one-out contributions need."""

    p: np.ndarray  # (d,)
    a_inv: np.ndarray  # (d, d)
    q_hist: np.ndarray  # (H, d)
    residual: np.ndarray  # (H,)
    leverage: np.ndarray  # (H,)
    a_inv_q: np.ndarray  # (H, d): row h is (A^-1 q_h)^T


def fold_in(
    q_hist: np.ndarray, y: np.ndarray, lam: float, prior: np.ndarray | None = None
) -> FoldIn:
    """Ridge fold-in of a user vector from history item factors ``q_hist`` (H, d) and
    targets ``y`` (H,), shrunk towards ``prior`` (zero when None) with weight ``lam`` > 0."""
    q_hist = np.asarray(q_hist, dtype=np.float64)
    d = q_hist.shape[1]
    p0 = np.zeros(d) if prior is None else np.asarray(prior, dtype=np.float64).reshape(d)
    a = q_hist.T @ q_hist + lam * np.eye(d)
    a_inv = np.linalg.inv(a)
    p = a_inv @ (q_hist.T @ np.asarray(y, dtype=np.float64) + lam * p0)
    aq = q_hist @ a_inv  # (H, d): rows are (A^-1 q_h)^T
    leverage = np.einsum("hd,hd->h", aq, q_hist)
    residual = np.asarray(y, dtype=np.float64) - q_hist @ p
    return FoldIn(p, a_inv, q_hist, residual, leverage, aq)


def mf_contributions(fold: FoldIn, q_items: np.ndarray) -> np.ndarray:
    """c(h, j) for the items ``q_items`` (J, d): an (J, H) array (see the module doc)."""
    aq = fold.a_inv_q
    return (np.asarray(q_items, dtype=np.float64) @ aq.T) * (fold.residual / (1.0 - fold.leverage))[
        None, :
    ]


def rescored_contributions(
    score_without: Callable[[int], np.ndarray], full: np.ndarray, n_history: int
) -> np.ndarray:
    """c(h, j) by rescoring: ``score_without(h)`` gives the scores of the same items
    without history item ``h``; ``full`` those with the whole history. (J, H)."""
    out = np.empty((len(full), n_history))
    for h in range(n_history):
        out[:, h] = full - score_without(h)
    return out
