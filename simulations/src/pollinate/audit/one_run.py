"""Empirical ε lower bounds from one training run (Steinke, Nasr and Jagielski, NeurIPS 2023).

The audit inserts ``m`` canaries into a run, each included independently with
probability 1/2 by a secret coin. After training, an auditor scores every canary from
what was released, guesses "included" or "excluded" for some of them and abstains on the
rest: ``r`` guesses, ``v`` of them correct. If the run were (ε, δ)-DP, the number of correct
guesses would be stochastically dominated by Binomial(r, e^ε / (1 + e^ε)), up to a δ term
(the paper's Theorem 3 / Proposition 5). :func:`p_value` is the probability of at least
``v`` correct guesses under that worst case, and :func:`epsilon_lower_bound` is the largest
ε whose p-value is below β: with confidence 1 − β, the run is *not* (ε, δ)-DP for any
smaller ε.

The computation follows the paper's reference algorithm (its Appendix, "p-value
computation"): with ``q = e^ε / (1 + e^ε)``,

    p(ε) = P[Binomial(r, q) ≥ v]
           + 2·m·δ · max_{i = 1..v} P[v − i ≤ Binomial(r, q) < v] / i,

capped at 1, and ε_lb is found by bisection on ε (p(ε) increases with ε). Values pinned in
the tests: (m = 1000, r = 100, v = 75, δ = 1e-4, β = 0.05) gives 0.67298 and
(m = 1e5, r = 1510, v = 1439, δ = 1e-5, β = 0.05) gives 2.67585.

Everything here is a pure function of numbers and arrays; nothing reads a run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pollinate.audit.errors import AuditError

__all__ = [
    "CanaryAudit",
    "GridPoint",
    "audit_canaries",
    "count_correct",
    "default_guess_grid",
    "epsilon_lower_bound",
    "p_value",
]


def _check_counts(m: int, r: int, v: int) -> None:
    for name, value in (("m", m), ("r", r), ("v", v)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise AuditError(f"{name} must be an integer count, got {value!r}")
    if not 0 <= v <= r <= m:
        raise AuditError(
            f"need 0 <= v <= r <= m (correct guesses <= guesses <= canaries), "
            f"got m={m}, r={r}, v={v}"
        )


def _check_probability(name: str, value: float, *, open_low: bool = False) -> None:
    if not math.isfinite(value) or value < 0 or value > 1 or (open_low and value == 0):
        bound = "(0, 1]" if open_low else "[0, 1]"
        raise AuditError(f"{name} must be a probability in {bound}, got {value!r}")


@lru_cache(maxsize=128)
def _log_binomial_coefficients(r: int) -> NDArray[np.float64]:
    """``log C(r, k)`` for ``k = 0..r`` (cached: one binary search reuses it ~40 times)."""
    log_factorial = np.array([math.lgamma(k + 1) for k in range(r + 1)], dtype=np.float64)
    coefficients = log_factorial[r] - log_factorial - log_factorial[::-1]
    coefficients.setflags(write=False)
    return coefficients


def _binomial_pmf(r: int, epsilon: float) -> NDArray[np.float64]:
    """P[Binomial(r, q) = k] for ``k = 0..r``, ``q = e^ε / (1 + e^ε)``, in log space."""
    log_q = -math.log1p(math.exp(-epsilon))  # log of e^ε / (1 + e^ε)
    log_1mq = -epsilon + log_q  # log of 1 / (1 + e^ε)
    k = np.arange(r + 1, dtype=np.float64)
    result: NDArray[np.float64] = np.exp(
        _log_binomial_coefficients(r) + k * log_q + (r - k) * log_1mq
    )
    return result


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Probability of at least ``v`` correct out of ``r`` guesses if the run were (ε, δ)-DP.

    ``m`` canaries, each included with probability 1/2; ``r`` guesses (abstentions not
    counted), ``v`` correct. The first term is the ε-DP worst case, randomized response:
    P[Binomial(r, e^ε/(1+e^ε)) ≥ v]. The second is the paper's δ term,
    ``2·m·δ·max_i P[v − i ≤ Binomial < v] / i``. The result is capped at 1.
    """
    _check_counts(m, r, v)
    if not math.isfinite(epsilon) or epsilon < 0:
        raise AuditError(f"epsilon must be finite and >= 0, got {epsilon!r}")
    _check_probability("delta", delta)
    pmf = _binomial_pmf(r, epsilon)
    tail = float(pmf[v:].sum())  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(tail, 1.0)
    # below[i - 1] = P[v - i <= Binomial(r, q) < v] for i = 1..v.
    below = np.cumsum(pmf[v - 1 :: -1])
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(tail + alpha * 2.0 * m * delta, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, delta: float, beta: float = 0.05, *, tolerance: float = 1e-10
) -> float:
    """The largest ε whose (ε, δ)-DP worst case gives ``v`` or more correct guesses w.p. ≤ β.

    With confidence ``1 − beta`` the run that produced these guesses is not (ε, δ)-DP for
    any ε below the returned value. Returns 0.0 when even ε = 0 explains the guesses
    (for example ``v`` about ``r / 2``, or no guesses at all). The bisection keeps the
    lower end, so the result errs low by at most ``tolerance``.
    """
    _check_counts(m, r, v)
    _check_probability("delta", delta)
    _check_probability("beta", beta, open_low=True)
    if not tolerance > 0:
        raise AuditError(f"tolerance must be > 0, got {tolerance!r}")
    if r == 0 or p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0  # invariant: p(low) < beta <= p(high)
    while p_value(m, r, v, high, delta) < beta:
        low, high = high, 2.0 * high
    while high - low > tolerance:
        middle = 0.5 * (low + high)
        if p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


def count_correct(
    scores: ArrayLike, included: ArrayLike, k_plus: int, k_minus: int
) -> tuple[int, int]:
    """Guess "included" for the ``k_plus`` highest scores and "excluded" for the ``k_minus``
    lowest; abstain on the rest. Returns ``(r, v)``: guesses made and guesses correct.

    Ties are broken by position (a stable sort), so canaries must not be ordered by their
    secret coin.
    """
    score_array, bits = _check_scores(scores, included)
    m = score_array.size
    if k_plus < 0 or k_minus < 0 or k_plus + k_minus > m:
        raise AuditError(
            f"need k_plus, k_minus >= 0 and k_plus + k_minus <= m={m}, got ({k_plus}, {k_minus})"
        )
    order = np.argsort(-score_array, kind="stable")
    guessed_in = order[:k_plus]
    guessed_out = order[m - k_minus :] if k_minus else order[:0]
    correct = int(bits[guessed_in].sum()) + int((~bits[guessed_out]).sum())
    return k_plus + k_minus, correct


def _check_scores(
    scores: ArrayLike, included: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.bool_]]:
    score_array = np.asarray(scores, dtype=np.float64)
    raw_bits = np.asarray(included)
    if score_array.ndim != 1 or raw_bits.shape != score_array.shape:
        raise AuditError(
            "scores and included must be 1-D and of the same length, "
            f"got shapes {score_array.shape} and {raw_bits.shape}"
        )
    if not np.all(np.isfinite(score_array)):
        raise AuditError("canary scores must be finite; score a failed canary as 0, not NaN")
    if raw_bits.size and not np.all((raw_bits == 0) | (raw_bits == 1)):
        raise AuditError("included must hold the secret coins as booleans or 0/1")
    return score_array, raw_bits.astype(bool)


def default_guess_grid(m: int) -> tuple[tuple[int, int], ...]:
    """A grid of ``(k_plus, k_minus)`` fixed by the canary count alone, before any score.

    For each fraction f of the canaries in (0.5%, 1%, 2%, 5%, 10%, 20%, 30%, 50%): r = f·m
    guesses (at least 1) split evenly between both ends, and the same r as "included"
    guesses only (useful when only membership moves a score, as for user-level canaries).
    """
    if m < 1:
        raise AuditError(f"need at least one canary, got m={m}")
    grid: list[tuple[int, int]] = []
    for fraction in (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5):
        guesses = min(m, max(1, round(fraction * m)))
        for point in ((guesses - guesses // 2, guesses // 2), (guesses, 0)):
            if point not in grid:
                grid.append(point)
    return tuple(grid)


@dataclass(frozen=True)
class GridPoint:
    """One pre-registered guess rule and the bound it gives at the corrected β."""

    k_plus: int
    k_minus: int
    guesses: int
    correct: int
    epsilon_lower_bound: float


@dataclass(frozen=True)
class CanaryAudit:
    """The best one-run lower bound over a grid of guess rules, Bonferroni-corrected.

    ``epsilon_lower_bound`` holds with confidence ``confidence`` (= 1 − ``beta``) for the
    whole grid: each rule was tested at ``beta_per_rule`` = β / (grid size).
    """

    canaries: int
    delta: float
    beta: float
    beta_per_rule: float
    confidence: float
    epsilon_lower_bound: float
    best: GridPoint
    grid: tuple[GridPoint, ...]


def audit_canaries(
    scores: ArrayLike,
    included: ArrayLike,
    *,
    delta: float,
    beta: float = 0.05,
    grid: Sequence[tuple[int, int]] | None = None,
) -> CanaryAudit:
    """Lower-bound ε from canary scores and their secret inclusion coins.

    ``scores[i]`` is how strongly the released model suggests canary ``i`` was included
    (higher: more likely); ``included[i]`` is its secret coin. Each ``(k_plus, k_minus)`` of
    the pre-registered ``grid`` (default: :func:`default_guess_grid`) guesses "included"
    for the ``k_plus`` top scores and "excluded" for the ``k_minus`` bottom ones, and gives
    a bound by :func:`epsilon_lower_bound`. Taking the best of several rules is a multiple
    comparison, so each rule is tested at β / len(grid) (a Bonferroni correction): the
    returned bound holds with confidence 1 − β overall. The grid must be chosen before the
    scores are seen, which is why it depends on nothing but the canary count.
    """
    score_array, bits = _check_scores(scores, included)
    m = int(score_array.size)
    _check_probability("delta", delta)
    _check_probability("beta", beta, open_low=True)
    rules = tuple(default_guess_grid(m) if grid is None else grid)
    if not rules:
        raise AuditError("the guess grid is empty; pass at least one (k_plus, k_minus)")
    if len(set(rules)) != len(rules):
        raise AuditError("the guess grid repeats a rule; list each (k_plus, k_minus) once")
    beta_per_rule = beta / len(rules)
    points = []
    for k_plus, k_minus in rules:
        guesses, correct = count_correct(score_array, bits, int(k_plus), int(k_minus))
        bound = epsilon_lower_bound(m, guesses, correct, delta, beta_per_rule)
        points.append(GridPoint(int(k_plus), int(k_minus), guesses, correct, bound))
    best = max(points, key=lambda point: point.epsilon_lower_bound)
    return CanaryAudit(
        canaries=m,
        delta=delta,
        beta=beta,
        beta_per_rule=beta_per_rule,
        confidence=1.0 - beta,
        epsilon_lower_bound=best.epsilon_lower_bound,
        best=best,
        grid=tuple(points),
    )
