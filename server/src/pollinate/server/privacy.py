"""The server's privacy bookkeeping: the user-level accountant, budgets and the ledger.

:class:`UserPrivacy` holds the settings of the user-level mechanism (clip ``S``, noise
multiplier ``z``, Poisson rate ``q``, δ) and the rounds released so far. ε is always
recomputed from the whole list of released rounds with dp-accounting (consecutive
identical rounds composed as one self-composed event), so it is the ε of one continuous
accountant, never of a fresh one.

:func:`privacy_summary` turns the run's ledger into the ``"privacy"`` block of
``metrics.json``.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pollinate.server.user_dp import default_user_delta
from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.accounting import calibrate_user_noise, user_epsilon
from pollinate.shared.privacy.ledger import LedgerEvent, read_ledger

USER_MECHANISM = "Poisson-sampled Gaussian sum of per-user clipped updates"


@lru_cache(maxsize=8)
def _epsilon(rounds: tuple[tuple[float, float], ...], delta: float, accountant: str) -> float:
    """ε of a list of released rounds. Cached: a round's budget check and its release ask
    for the same list, and a PLD evaluation takes about a second."""
    return user_epsilon(rounds, delta, accountant)  # type: ignore[arg-type]


@dataclass
class UserPrivacy:
    clip: float
    noise_multiplier: float
    sample_rate: float
    delta: float
    accountant: str  # "rdp" | "pld"
    budget: float | None
    n_devices: int
    rounds: list[tuple[float, float]] = field(default_factory=list)

    @classmethod
    def from_config(cls, cfg: FederationConfig, n_devices: int) -> UserPrivacy:
        delta = cfg.user_delta if cfg.user_delta is not None else default_user_delta(n_devices)
        if cfg.user_noise is not None:
            z = cfg.user_noise
        else:
            assert cfg.user_epsilon is not None  # the config validator guarantees it
            z = calibrate_user_noise(
                cfg.user_epsilon, cfg.sample_rate, cfg.rounds, delta, cfg.user_accountant
            )
        return cls(
            clip=cfg.user_clip,
            noise_multiplier=z,
            sample_rate=cfg.sample_rate,
            delta=delta,
            accountant=cfg.user_accountant,
            budget=cfg.user_epsilon_budget,
            n_devices=n_devices,
        )

    @property
    def expected_devices(self) -> float:
        """``q·N``: the divisor of the noisy sum (never the realised count)."""
        return self.sample_rate * self.n_devices

    @property
    def epsilon(self) -> float:
        return _epsilon(tuple(self.rounds), self.delta, self.accountant)

    def epsilon_after_next(self) -> float:
        nxt = [*self.rounds, (self.noise_multiplier, self.sample_rate)]
        return _epsilon(tuple(nxt), self.delta, self.accountant)

    def next_round_allowed(self) -> bool:
        return self.budget is None or self.epsilon_after_next() <= self.budget

    def release(self, round_: int) -> LedgerEvent:
        """Account one released round; return its ledger event (ε cumulative)."""
        self.rounds.append((self.noise_multiplier, self.sample_rate))
        return LedgerEvent(
            layer="user",
            unit="user",
            round=round_,
            mechanism=USER_MECHANISM,
            noise_multiplier=self.noise_multiplier,
            sample_rate=self.sample_rate,
            steps=1,
            clip_norm=self.clip,
            delta=self.delta,
            accountant=f"dp-accounting-{self.accountant}",
            epsilon=self.epsilon,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "unit": "user",
            "clip": self.clip,
            "noise_multiplier": self.noise_multiplier,
            "sample_rate": self.sample_rate,
            "expected_devices": self.expected_devices,
            "delta": self.delta,
            "accountant": f"dp-accounting-{self.accountant}",
            "rounds_released": len(self.rounds),
            "budget": self.budget,
        }


def privacy_summary(ledger_path: Path, n_devices: int) -> dict[str, Any]:
    """The ``"privacy"`` block of ``metrics.json``, from the ledger alone.

    Local ε is per device, the cumulative ε of its last event; ``epsilon_median`` is over
    the devices that trained at least once (``devices_trained`` says how many). Devices
    that never trained spent nothing.
    """
    if not ledger_path.exists():
        return {}
    events = read_ledger(ledger_path)
    out: dict[str, Any] = {}
    last_local: dict[str, LedgerEvent] = {}
    user: LedgerEvent | None = None
    for e in events:
        if e.layer == "local":
            prev = last_local.get(str(e.device))
            if prev is None or e.round >= prev.round:
                last_local[str(e.device)] = e
        elif user is None or e.round >= user.round:
            user = e
    if last_local:
        eps = [e.epsilon for e in last_local.values()]
        out["local"] = {
            "unit": "interaction",
            "epsilon_max": max(eps),
            "epsilon_median": statistics.median(eps),
            "delta": max(e.delta for e in last_local.values()),
            "devices_trained": len(eps),
            "devices": n_devices,
            "accountant": sorted({e.accountant for e in last_local.values()}),
        }
    if user is not None:
        out["user"] = {
            "unit": "user",
            "epsilon": user.epsilon,
            "delta": user.delta,
            "rounds_released": sum(1 for e in events if e.layer == "user"),
            "accountant": user.accountant,
        }
    return out
