"""Pure functions of privacy accounting, over Google's dp-accounting and Opacus.

Two layers, each with its own unit of privacy:

* **user level** (server): each round releases the sum of clipped device updates with
  Gaussian noise z·S, devices sampled by Poisson sampling at rate q. A run of T rounds
  is ``SelfComposed(PoissonSampled(q, Gaussian(z)), T)``; rounds with other settings
  compose one after another. Accounted with dp-accounting, RDP or PLD.
* **interaction level** (device): Opacus DP-SGD, whose history is a list of
  ``(noise_multiplier, sample_rate, steps)``; accounted with Opacus's RDP or PRV
  accountant over *every* round the device ever trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from pollinate.shared.errors import ConfigError

UserAccountant = Literal["rdp", "pld"]

#: Smallest noise multiplier the PLD accountant is asked about (see calibrate_user_noise).
PLD_MIN_NOISE = 0.3
LocalAccountant = Literal["rdp", "prv"]


def _check(noise: float, rate: float, delta: float) -> None:
    if not noise > 0:
        raise ConfigError(f"noise multiplier must be positive, got {noise}")
    if not 0 < rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def user_round_event(noise: float, rate: float) -> dp_accounting.DpEvent:
    """The DP event of one server round."""
    return dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(noise))


def user_accountant(kind: UserAccountant) -> dp_accounting.PrivacyAccountant:
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ConfigError(f"user-level accountant must be 'rdp' or 'pld', got {kind!r}")


def _runs(items: Sequence[tuple[float, float]]) -> list[tuple[float, float, int]]:
    """Consecutive identical ``(noise, rate)`` pairs as ``(noise, rate, count)``."""
    out: list[tuple[float, float, int]] = []
    for noise, rate in items:
        if out and out[-1][0] == noise and out[-1][1] == rate:
            out[-1] = (noise, rate, out[-1][2] + 1)
        else:
            out.append((noise, rate, 1))
    return out


def user_epsilon(
    rounds: Sequence[tuple[float, float]], delta: float, accountant: UserAccountant = "rdp"
) -> float:
    """ε after the server rounds ``[(noise, rate), ...]`` (composed in order).

    Consecutive identical rounds are composed as one self-composed event, which is the
    same composition, computed once.
    """
    acc = user_accountant(accountant)
    for noise, rate, count in _runs(rounds):
        _check(noise, rate, delta)
        acc.compose(user_round_event(noise, rate), count)
    return float(acc.get_epsilon(delta)) if rounds else 0.0


def user_epsilon_for(
    noise: float, rate: float, n_rounds: int, delta: float, accountant: UserAccountant = "rdp"
) -> float:
    """ε of ``n_rounds`` identical rounds (one self-composed event)."""
    _check(noise, rate, delta)
    if n_rounds == 0:
        return 0.0
    acc = user_accountant(accountant)
    acc.compose(user_round_event(noise, rate), n_rounds)
    return float(acc.get_epsilon(delta))


def calibrate_user_noise(
    target_epsilon: float,
    rate: float,
    n_rounds: int,
    delta: float,
    accountant: UserAccountant = "rdp",
) -> float:
    """The smallest noise multiplier whose ``n_rounds`` rounds spend at most ``target_epsilon``."""
    if not target_epsilon > 0:
        raise ConfigError(f"target epsilon must be positive, got {target_epsilon}")
    _check(1.0, rate, delta)

    def solve(kind: UserAccountant, low: float, high: float) -> float:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: user_accountant(kind),
                lambda z: dp_accounting.SelfComposedDpEvent(user_round_event(z, rate), n_rounds),
                target_epsilon,
                delta,
                bracket_interval=dp_accounting.ExplicitBracketInterval(low, high),
                tol=1e-6,
            )
        )

    z_rdp = solve("rdp", 1e-3, 1e3)
    if accountant == "rdp":
        return z_rdp
    # PLD is tighter, so its noise is at most the RDP one. Its discretised loss grows
    # without bound as z -> 0 (gigabytes below z ~ 0.2), so search no lower than
    # PLD_MIN_NOISE: where even that meets the target, it is returned (more noise than
    # needed, never less).
    low = max(0.5 * z_rdp, PLD_MIN_NOISE)
    if low >= z_rdp or user_epsilon_for(low, rate, n_rounds, delta, "pld") <= target_epsilon:
        return min(low, z_rdp)
    return solve("pld", low, z_rdp)


def local_epsilon(
    history: Sequence[tuple[float, float, int]],
    delta: float,
    accountant: LocalAccountant = "rdp",
) -> float:
    """ε of a device's whole DP-SGD history ``[(noise, sample_rate, steps), ...]`` (Opacus)."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    if not history:
        return 0.0
    for noise, rate, steps in history:
        _check(noise, rate, delta)
        if steps < 0:
            raise ConfigError(f"steps must be non-negative, got {steps}")
    # Consecutive entries with the same (noise, rate) merge into one with their steps
    # summed: RDP and PRV both compose such steps exactly as one longer run.
    merged: list[tuple[float, float, int]] = []
    for z, q, steps in history:
        if merged and merged[-1][:2] == (float(z), float(q)):
            merged[-1] = (float(z), float(q), merged[-1][2] + int(steps))
        else:
            merged.append((float(z), float(q), int(steps)))
    if accountant == "prv":
        acc = PRVAccountant()
        acc.history.extend(merged)
        return float(acc.get_epsilon(delta))
    # What RDPAccountant.get_epsilon computes (Σ compute_rdp(q, z, steps), then
    # get_privacy_spent, over the same orders), with the per-step RDP of each (z, q)
    # cached: Opacus's series for fractional orders takes ~1 s at large q, and a device
    # or a ledger recompute asks for the same (z, q) every round.
    from opacus.accountants.analysis import rdp as opacus_rdp

    total = sum(steps * _sgm_rdp_per_step(z, q) for z, q, steps in merged)
    eps, _ = opacus_rdp.get_privacy_spent(
        orders=RDPAccountant.DEFAULT_ALPHAS, rdp=total, delta=delta
    )
    return float(eps)


@lru_cache(maxsize=4096)
def _sgm_rdp_per_step(noise: float, rate: float) -> np.ndarray:
    """Opacus's RDP of one step of the sampled Gaussian mechanism, at its default orders."""
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as opacus_rdp

    out = np.asarray(
        opacus_rdp.compute_rdp(
            q=rate, noise_multiplier=noise, steps=1, orders=RDPAccountant.DEFAULT_ALPHAS
        ),
        dtype=np.float64,
    )
    out.setflags(write=False)
    return out
