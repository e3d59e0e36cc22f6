"""Pure functions of privacy accounting, over Google's dp-accounting.

Two layers, each with its own unit of privacy and neighbouring relation:

* **user level** (server). Unit: one user (all of a device's data). Neighbours:
  **add/remove one** (``ADD_OR_REMOVE_ONE``): a device is in the Poisson sample or not.
  Each round releases the sum of clipped device updates with Gaussian noise z·S, devices
  sampled at rate q; a run of T rounds is ``SelfComposed(PoissonSampled(q,
  Gaussian(z)), T)``. Accounted with dp-accounting's RDP or PLD accountant (PLD at its
  default discretisation, 1e-4).
* **interaction level** (device). Unit: one interaction (one training example).
  Neighbours: **replace one** (``REPLACE_ONE``): the device releases its example count n
  (``num-examples``, and q, steps and δ, which are derived from n), so the neighbouring
  dataset has the same size and one interaction changed. A device's history is a list of
  ``(noise_multiplier, sample_rate, steps)``: DP-SGD rounds (Poisson rate q, per-example
  clip C, noise z·C) and evaluation releases (a plain Gaussian, ``(z_e, 1.0, 1)``).
  Accounted with dp-accounting's **PLD** accountant under ``REPLACE_ONE``, which doubles
  the sensitivity itself (z keeps the usual convention σ = z·C). Nothing else can:
  Opacus's RDP and PRV accountants assume add/remove, and dp-accounting's RDP
  accountant refuses Poisson-sampled replace-one and treats a plain Gaussian under
  ``REPLACE_ONE`` like add/remove. The difference is real: at q = 0.5, 60 steps,
  z = 3.7, δ = 1e-5 the PLD gives ε = 10.46 under replace-one and 4.82 under add/remove.

Speed. PLD composition is a convolution, so it is commutative: a history is reduced to
its canonical form, the sorted tuple of ``(z, q, total steps)`` (:func:`canonical_history`),
and ε is cached per ``(canonical history, δ, relation, accountant)``. A device asks for
its own history every round and a ledger recomputation asks for every prefix of every
device's history; identical devices share one entry. The local PLD uses a value
discretisation of 1e-3 instead of 1e-4 (about ten times faster). dp-accounting's
discretisation is pessimistic (it rounds privacy loss up), so the coarser grid can only
over-report ε: against the default grid by 0.14% at ε ≈ 1.4 after 2000 steps and by
1e-5 at ε ≈ 37 (tests/shared/test_accounting_pins.py bounds it at 0.5%, never below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal

import dp_accounting
from dp_accounting import pld, rdp

from pollinate.shared.errors import ConfigError

UserAccountant = Literal["rdp", "pld"]
LocalAccountant = Literal["pld"]
Neighbouring = Literal["add_remove", "replace_one"]

#: Smallest noise multiplier the PLD accountant is asked about (see calibrate_user_noise).
PLD_MIN_NOISE = 0.3
#: Smallest noise multiplier the replace-one PLD is asked about. Below it the discretised
#: loss needs hundreds of megabytes to gigabytes (z = 1e-3 exhausts memory) and ε is far
#: beyond any meaningful guarantee (above 100 after 20 steps at q = 0.5): a history with
#: a release of smaller z has ε = ∞ (no guarantee is claimed, never an under-estimate),
#: and a calibration never returns less.
LOCAL_MIN_NOISE = 0.3
#: The PLD value discretisation of the local (replace-one) accountant (see above).
LOCAL_PLD_DISCRETIZATION = 1e-3
#: Why the interaction level has one accountant only.
LOCAL_ACCOUNTANT_REASON = (
    "interaction-level DP is accounted under the replace-one neighbouring relation (the "
    "device's example count is public), which only dp-accounting's PLD accountant computes "
    "for Poisson-sampled Gaussians: Opacus's RDP/PRV and dp-accounting's RDP account "
    "add/remove only; use --local-accountant pld"
)

History = Sequence[tuple[float, float, int]]
CanonicalHistory = tuple[tuple[float, float, int], ...]


def check_local_accountant(accountant: str) -> None:
    """Refuse any interaction-level accountant but ``"pld"`` (see LOCAL_ACCOUNTANT_REASON)."""
    if accountant != "pld":
        raise ConfigError(f"local accountant {accountant!r} refused: {LOCAL_ACCOUNTANT_REASON}")


def _check(noise: float, rate: float, delta: float) -> None:
    if not (noise > 0 and math.isfinite(noise)):
        raise ConfigError(f"noise multiplier must be positive, got {noise}")
    if not 0 < rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")


def _event(noise: float, rate: float) -> dp_accounting.DpEvent:
    """``PoissonSampled(rate, Gaussian(noise))``; a plain Gaussian at rate 1."""
    gaussian = dp_accounting.GaussianDpEvent(noise)
    return gaussian if rate >= 1 else dp_accounting.PoissonSampledDpEvent(rate, gaussian)


def canonical_history(history: History) -> CanonicalHistory:
    """The multiset of a history: equal ``(z, q)`` merged, steps summed, sorted.

    Entries with 0 steps released nothing and are dropped. Every composition here is
    commutative, so the canonical history has the ε of the history.
    """
    totals: dict[tuple[float, float], int] = {}
    for noise, rate, steps in history:
        if int(steps) != steps or steps < 0:
            raise ConfigError(f"steps must be a non-negative integer, got {steps}")
        if steps == 0:
            continue
        _check(float(noise), float(rate), 0.5)
        key = (float(noise), float(rate))
        totals[key] = totals.get(key, 0) + int(steps)
    return tuple(sorted((z, q, n) for (z, q), n in totals.items()))


def _relation(neighbouring: str) -> dp_accounting.NeighboringRelation:
    if neighbouring == "add_remove":
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if neighbouring == "replace_one":
        return dp_accounting.NeighboringRelation.REPLACE_ONE
    raise ConfigError(
        f"neighbouring relation must be 'add_remove' or 'replace_one', got {neighbouring!r}"
    )


@lru_cache(maxsize=512)
def _event_pld(
    noise: float, rate: float, steps: int, neighbouring: str, interval: float
) -> pld.privacy_loss_distribution.PrivacyLossDistribution:
    """The PLD of ``steps`` releases of one ``(noise, rate)``, as dp-accounting's
    PLDAccountant builds it (a Gaussian of std z/√steps at rate 1; otherwise the
    subsampled Gaussian self-composed), with the one-step PLD cached: it is most of the
    cost, and a device asks for the same ``(z, q)`` with a growing step count."""
    relation = _relation(neighbouring)
    if rate >= 1:
        return _gaussian_pld(noise / math.sqrt(steps), 1.0, relation, interval)
    return _gaussian_pld(noise, rate, relation, interval).self_compose(steps)


@lru_cache(maxsize=256)
def _gaussian_pld(
    std: float, rate: float, relation: dp_accounting.NeighboringRelation, interval: float
) -> pld.privacy_loss_distribution.PrivacyLossDistribution:
    return pld.privacy_loss_distribution.from_gaussian_mechanism(
        standard_deviation=std,
        value_discretization_interval=interval,
        sampling_prob=rate,
        neighboring_relation=relation,
    )


@lru_cache(maxsize=16384)
def _composed_epsilon(
    history: CanonicalHistory, delta: float, neighbouring: str, accountant: str
) -> float:
    if accountant == "pld":
        # What PLDAccountant(relation, interval).compose(event, steps)... computes, with
        # the PLD of each event cached (tests compare it with the accountant itself).
        interval = LOCAL_PLD_DISCRETIZATION if neighbouring == "replace_one" else 1e-4
        total = pld.privacy_loss_distribution.identity(value_discretization_interval=interval)
        for noise, rate, steps in history:
            total = total.compose(_event_pld(noise, rate, steps, neighbouring, interval))
        return float(total.get_epsilon_for_delta(delta))
    if accountant == "rdp":
        acc = rdp.RdpAccountant(neighboring_relation=_relation(neighbouring))
        for noise, rate, steps in history:
            acc.compose(_event(noise, rate), steps)
        return float(acc.get_epsilon(delta))
    raise ConfigError(f"accountant must be 'rdp' or 'pld', got {accountant!r}")


def history_epsilon(
    history: History,
    delta: float,
    neighbouring: Neighbouring,
    accountant: UserAccountant = "pld",
) -> float:
    """ε of a whole history ``[(noise, sample_rate, steps), ...]`` as one accountant.

    ``sample_rate`` 1 is a plain Gaussian. Replace-one needs ``accountant="pld"``
    (dp-accounting's RDP accountant is wrong or refuses there, see the module docstring).
    Cached per canonical history (:func:`canonical_history`). Under replace-one, a release
    with a noise multiplier below LOCAL_MIN_NOISE makes ε infinite (see there).
    """
    if not 0 < delta < 1:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    if neighbouring == "replace_one" and accountant != "pld":
        raise ConfigError(
            f"replace-one accountant {accountant!r} refused: {LOCAL_ACCOUNTANT_REASON}"
        )
    key = canonical_history(history)
    if not key:
        return 0.0
    if neighbouring == "replace_one" and key[0][0] < LOCAL_MIN_NOISE:  # sorted by z
        return math.inf
    return _composed_epsilon(key, float(delta), neighbouring, accountant)


def user_round_event(noise: float, rate: float) -> dp_accounting.DpEvent:
    """The DP event of one server round (a plain Gaussian when every device is asked)."""
    return _event(noise, rate)


def user_accountant(kind: UserAccountant) -> dp_accounting.PrivacyAccountant:
    """A fresh add/remove accountant of the user level."""
    if kind == "rdp":
        return rdp.RdpAccountant()
    if kind == "pld":
        return pld.PLDAccountant()
    raise ConfigError(f"user-level accountant must be 'rdp' or 'pld', got {kind!r}")


def user_epsilon(
    rounds: Sequence[tuple[float, float]], delta: float, accountant: UserAccountant = "rdp"
) -> float:
    """ε after the server rounds ``[(noise, rate), ...]`` (add/remove, one accountant)."""
    for noise, rate in rounds:
        _check(noise, rate, delta)
    return history_epsilon([(z, q, 1) for z, q in rounds], delta, "add_remove", accountant)


def user_epsilon_for(
    noise: float, rate: float, n_rounds: int, delta: float, accountant: UserAccountant = "rdp"
) -> float:
    """ε of ``n_rounds`` identical rounds (one self-composed event)."""
    _check(noise, rate, delta)
    return history_epsilon([(noise, rate, n_rounds)], delta, "add_remove", accountant)


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


# --------------------------------------------------------------------------- interaction level
def local_epsilon(history: History, delta: float, accountant: str = "pld") -> float:
    """ε of a device's whole history ``[(noise, sample_rate, steps), ...]``.

    Replace-one neighbours, dp-accounting PLD (the only valid ``accountant``), one
    accountant over every DP-SGD round and evaluation release the device ever made.
    """
    check_local_accountant(accountant)
    return history_epsilon(history, delta, "replace_one", "pld")


@lru_cache(maxsize=256)
def calibrate_local_noise(
    target_epsilon: float, delta: float, sample_rate: float, steps: int, rel_tol: float = 1e-3
) -> float:
    """The noise multiplier whose ``steps`` steps at ``sample_rate`` spend ε in
    ``[(1 - rel_tol)·target, target]`` (replace-one PLD, as :func:`local_epsilon`).

    Deterministic (the same device gets the same z every round) and cached. A bracketed
    search on ``log z``: interpolation in ``(log z, log ε)``, where ε is nearly a power of
    z, with a bisection every third step so the bracket always shrinks. Below
    LOCAL_MIN_NOISE, where the PLD grows costly, it stops: if even that meets the target
    it is returned (more noise than needed, never less).
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ConfigError(f"target epsilon must be positive, got {target_epsilon}")
    if steps < 1:
        raise ConfigError(f"steps must be >= 1 to calibrate, got {steps}")
    _check(1.0, sample_rate, delta)

    def eps(z: float) -> float:
        return local_epsilon([(z, sample_rate, steps)], delta)

    low, high = 1.0, 1.0
    eps_high = eps(high)
    if eps_high > target_epsilon:  # raise z until the target is met
        while eps_high > target_epsilon:
            low, high = high, 2 * high
            if high > 1e5:
                raise ConfigError(
                    f"cannot reach ε={target_epsilon} at δ={delta} with {steps} steps at "
                    f"rate {sample_rate}: even z = 1e5 spends more"
                )
            eps_high = eps(high)
        eps_low = eps(low)
    else:  # lower z until the target is exceeded
        eps_low = eps_high
        while eps_low <= target_epsilon:
            if low <= LOCAL_MIN_NOISE:
                return LOCAL_MIN_NOISE
            high, eps_high = low, eps_low
            low = max(low / 2, LOCAL_MIN_NOISE)
            eps_low = eps(low)
    goal = math.log(target_epsilon * (1 - rel_tol / 2))
    for i in range(100):
        if eps_high >= (1 - rel_tol) * target_epsilon or high / low < 1 + 1e-9:
            break
        a, b = math.log(low), math.log(high)
        if i % 3 == 2 or eps_high <= 0:
            x = (a + b) / 2
        else:
            fa, fb = math.log(eps_low), math.log(eps_high)
            x = a + (fa - goal) * (b - a) / (fa - fb)
            x = min(max(x, a + 0.01 * (b - a)), b - 0.01 * (b - a))
        z = math.exp(x)
        e = eps(z)
        if e > target_epsilon:
            low, eps_low = z, e
        else:
            high, eps_high = z, e
    return high
