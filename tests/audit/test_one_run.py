"""The one-run ε lower bound (Steinke, Nasr and Jagielski 2023), pinned to the paper."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from pollinate.audit.errors import AuditError
from pollinate.audit.one_run import (
    audit_canaries,
    count_correct,
    default_guess_grid,
    epsilon_lower_bound,
    p_value,
)


@pytest.mark.parametrize(
    ("m", "r", "v", "delta", "beta", "expected"),
    [
        (1000, 100, 75, 1e-4, 0.05, 0.67298),
        (100_000, 1510, 1439, 1e-5, 0.05, 2.67585),
    ],
)
def test_pinned_to_the_papers_figures(
    m: int, r: int, v: int, delta: float, beta: float, expected: float
) -> None:
    assert epsilon_lower_bound(m, r, v, delta, beta) == pytest.approx(expected, abs=5e-6)


def test_p_value_without_delta_is_the_randomized_response_tail() -> None:
    # Independent: P[Binomial(r, q) >= v] summed with exact integer binomials.
    r, v, eps = 40, 30, 0.8
    q = math.exp(eps) / (1 + math.exp(eps))
    tail = sum(math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(v, r + 1))
    assert p_value(1000, r, v, eps, 0.0) == pytest.approx(tail, rel=1e-10)


def test_p_value_delta_term_follows_the_paper() -> None:
    # Independent: 2·m·δ · max_i P[v - i <= Binomial(r, q) < v] / i, from exact binomials.
    m, r, v, eps, delta = 500, 60, 45, 1.0, 1e-4
    q = math.exp(eps) / (1 + math.exp(eps))
    pmf = [math.comb(r, k) * q**k * (1 - q) ** (r - k) for k in range(r + 1)]
    alpha = max(sum(pmf[v - i : v]) / i for i in range(1, v + 1))
    expected = sum(pmf[v:]) + 2 * m * delta * alpha
    assert p_value(m, r, v, eps, delta) == pytest.approx(expected, rel=1e-10)


def test_the_bound_is_where_the_p_value_crosses_beta() -> None:
    eps = epsilon_lower_bound(1000, 100, 75, 1e-4, 0.05)
    assert p_value(1000, 100, 75, eps, 1e-4) < 0.05 <= p_value(1000, 100, 75, eps + 1e-6, 1e-4)


def test_more_correct_guesses_give_a_larger_bound() -> None:
    bounds = [epsilon_lower_bound(1000, 100, v, 1e-5, 0.05) for v in range(50, 101, 5)]
    assert all(b <= a for b, a in itertools.pairwise(bounds))
    assert bounds[-1] > bounds[-2] > bounds[3] > 0


def test_more_confidence_or_more_delta_gives_a_smaller_bound() -> None:
    base = epsilon_lower_bound(1000, 200, 160, 1e-5, 0.05)
    assert epsilon_lower_bound(1000, 200, 160, 1e-5, 0.01) < base
    assert epsilon_lower_bound(1000, 200, 160, 1e-3, 0.05) < base


def test_guessing_at_chance_gives_zero() -> None:
    assert epsilon_lower_bound(1000, 100, 50, 1e-5, 0.05) == 0.0
    assert epsilon_lower_bound(1000, 0, 0, 1e-5, 0.05) == 0.0
    rng = np.random.default_rng(7)
    included = rng.random(2000) < 0.5
    scores = rng.normal(size=2000)  # unrelated to the coins
    assert audit_canaries(scores, included, delta=1e-5).epsilon_lower_bound == 0.0


def test_a_huge_delta_explains_anything() -> None:
    assert epsilon_lower_bound(1000, 100, 100, 0.01, 0.05) == 0.0


def test_perfect_guesses_are_capped_by_the_canary_count() -> None:
    """Even a non-private run cannot prove more than r guesses allow."""
    small = epsilon_lower_bound(100, 100, 100, 0.0, 0.05)
    large = epsilon_lower_bound(1000, 1000, 1000, 0.0, 0.05)
    # All-correct under ε-DP randomized response: q^r <= β  <=>  ε >= -log(β^(-1/r) - 1).
    for r, bound in ((100, small), (1000, large)):
        assert bound == pytest.approx(-math.log(0.05 ** (-1 / r) - 1), abs=1e-8)
    assert large > small


def test_count_correct_guesses_both_ends_and_abstains_in_between() -> None:
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.5, 0.7])
    included = np.array([1, 0, 0, 0, 1, 1])
    # Top 2 (0.9 in, 0.8 out) and bottom 2 (0.1 out, 0.2 out): 3 right of 4.
    assert count_correct(scores, included, 2, 2) == (4, 3)
    assert count_correct(scores, included, 0, 1) == (1, 1)
    with pytest.raises(AuditError):
        count_correct(scores, included, 4, 3)


def test_audit_canaries_applies_bonferroni_over_the_grid() -> None:
    rng = np.random.default_rng(3)
    included = rng.random(1000) < 0.5
    scores = included * 2.0 + rng.normal(size=1000)
    grid = [(50, 50), (100, 100), (200, 200), (100, 0)]
    audit = audit_canaries(scores, included, delta=1e-5, beta=0.05, grid=grid)
    assert audit.beta_per_rule == pytest.approx(0.05 / 4)
    assert audit.confidence == pytest.approx(0.95)
    assert len(audit.grid) == 4
    best = audit.best
    assert audit.epsilon_lower_bound == max(p.epsilon_lower_bound for p in audit.grid) > 0
    assert (best.guesses, best.correct) == count_correct(
        scores, included, best.k_plus, best.k_minus
    )
    # The corrected bound is below what the same rule would give uncorrected.
    uncorrected = epsilon_lower_bound(1000, best.guesses, best.correct, 1e-5, 0.05)
    assert audit.epsilon_lower_bound < uncorrected
    assert audit.epsilon_lower_bound == epsilon_lower_bound(
        1000, best.guesses, best.correct, 1e-5, 0.05 / 4
    )


def test_default_grid_depends_only_on_the_canary_count() -> None:
    grid = default_guess_grid(1000)
    assert grid == default_guess_grid(1000)
    assert len(set(grid)) == len(grid)
    assert all(min(kp, km) >= 0 and 1 <= kp + km <= 1000 for kp, km in grid)
    assert (250, 250) in grid and (500, 0) in grid
    assert all(1 <= kp + km <= 3 for kp, km in default_guess_grid(3))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 20, 5, 1e-5)
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 5, 6, 1e-5)
    with pytest.raises(AuditError):
        epsilon_lower_bound(10, 5, 3, 1e-5, beta=0.0)
    with pytest.raises(AuditError):
        p_value(10, 5, 3, -1.0, 0.0)
    with pytest.raises(AuditError):
        audit_canaries([0.1, float("nan")], [0, 1], delta=1e-5)
    with pytest.raises(AuditError):
        audit_canaries([0.1, 0.2], [0, 2], delta=1e-5)
    with pytest.raises(AuditError):
        audit_canaries([0.1, 0.2], [0, 1], delta=1e-5, grid=[(1, 0), (1, 0)])
