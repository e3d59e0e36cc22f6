"""The server's privacy bookkeeping: the user-level accountant, budgets and the ledger.

:class:`UserPrivacy` holds the settings of the user-level mechanism (unit: one user;
neighbours: add/remove one, a device is in the Poisson sample or not; clip ``S``, noise
multiplier ``z``, rate ``q``, δ) and the rounds released so far. ε is always recomputed
from the whole list of released rounds with dp-accounting's RDP or PLD accountant
(:func:`~pollinate.shared.privacy.accounting.user_epsilon`), so it is the ε of one
continuous accountant, never of a fresh one. Its ledger events say
``neighbouring="add_remove"``.

A resumed run restores the released rounds from the ledger (:func:`restore_user_rounds`):
every user event in it, including any released after the last checkpoint (over-counted,
never under-counted). A missing, unreadable or truncated ledger stops the resume with a
:class:`LedgerResumeError` instead of restarting the accountant at ε = 0.

:func:`privacy_summary` turns the run's ledger into the ``"privacy"`` block of
``metrics.json``: every ε in it is recomputed from the events
(:func:`~pollinate.shared.privacy.ledger.recompute`), never copied from a live value or a
recorded field, and a ledger whose recorded ε disagrees with the recomputation is an
error.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from pollinate.server.user_dp import default_user_delta
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.accounting import calibrate_user_noise, user_epsilon
from pollinate.shared.privacy.ledger import LedgerError, LedgerEvent, read_ledger, recompute
from pollinate.shared.progress import step

USER_MECHANISM = "Poisson-sampled Gaussian sum of per-user clipped updates"

#: Largest relative difference between a recorded and a recomputed ε that a summary accepts.
LEDGER_TOLERANCE = 1e-6


class LedgerResumeError(PollinateError):
    """A user-level DP run cannot resume: its ledger is missing, unreadable or truncated."""


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
            with step(
                f"calibrating user-level noise to ε = {cfg.user_epsilon:g} over {cfg.rounds} "
                "rounds",
                enabled=cfg.progress,
            ):
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
            neighbouring="add_remove",
            kind="train",
        )

    def restore(self, ledger_path: Path, checkpoint_round: int) -> None:
        """Resume the accountant from the run's ledger (see :func:`restore_user_rounds`)."""
        self.rounds = restore_user_rounds(ledger_path, checkpoint_round)

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


def restore_user_rounds(ledger_path: Path, checkpoint_round: int) -> list[tuple[float, float]]:
    """The user-level rounds ``[(noise, rate), ...]`` released so far, from the ledger.

    Every user event counts (an event of ``steps`` steps as that many rounds), including
    those released after the checkpoint, which a resumed run releases again: ε is
    over-counted, never under-counted. Raises :class:`LedgerResumeError` when the ledger
    is missing, unreadable, inconsistent, or holds fewer user training events than the
    checkpoint's ``checkpoint_round`` rounds (every such round released one).
    """
    fix = (
        "restore the run's ledger.jsonl from a backup and resume again, or start a new run "
        "in a new --out directory (its ε starts from 0 and covers only its own releases)"
    )
    if not ledger_path.exists():
        raise LedgerResumeError(
            f"cannot resume a user-level DP run: its ledger {ledger_path} is missing, while the "
            f"checkpoint is at round {checkpoint_round}; without it the accountant would "
            f"restart at ε = 0. To fix: {fix}"
        )
    try:
        events = read_ledger(ledger_path)
        consistency = recompute(events).worst_relative_error
    except (LedgerError, OSError, UnicodeDecodeError) as exc:
        raise LedgerResumeError(
            f"cannot resume a user-level DP run: its ledger {ledger_path} is unreadable "
            f"({exc}). To fix: {fix}"
        ) from exc
    if consistency > LEDGER_TOLERANCE:
        raise LedgerResumeError(
            f"cannot resume a user-level DP run: a recorded ε in {ledger_path} differs from "
            f"its recomputation by {consistency:.3g} (relative); the ledger was altered. "
            f"To fix: {fix}"
        )
    user = sorted(
        (e for e in events if e.layer == "user"), key=lambda e: (e.round, e.kind != "train")
    )
    trained = sum(1 for e in user if e.kind == "train")
    if trained < checkpoint_round:
        raise LedgerResumeError(
            f"cannot resume a user-level DP run: its ledger {ledger_path} holds {trained} "
            f"user-level training releases but the checkpoint is at round {checkpoint_round}, "
            f"which released one every round; the ledger is truncated and the accountant "
            f"would under-count ε. To fix: {fix}"
        )
    return [(e.noise_multiplier, e.sample_rate) for e in user for _ in range(e.steps)]


def _relation(events: list[LedgerEvent]) -> str | list[str]:
    found: list[str] = sorted({e.neighbouring for e in events})
    return found[0] if len(found) == 1 else found


def _counts(events: list[LedgerEvent]) -> dict[str, int]:
    return {kind: sum(1 for e in events if e.kind == kind) for kind in ("train", "evaluate")}


def privacy_summary(ledger_path: Path, n_devices: int) -> dict[str, Any]:
    """The ``"privacy"`` block of ``metrics.json``, recomputed from the ledger alone.

    Every ε is :func:`~pollinate.shared.privacy.ledger.recompute`'s, not the recorded
    field; a recorded ε that differs from it by more than ``LEDGER_TOLERANCE`` (relative)
    raises :class:`~pollinate.shared.privacy.ledger.LedgerError`, since an inconsistent
    ledger must never be reported as if it were sound. Local ε is per device, after its
    last release (training or evaluation); ``epsilon_median`` is over the devices with
    at least one release (``devices_accounted``; ``devices_trained`` counts those that
    trained). Devices that released nothing spent nothing.
    """
    if not ledger_path.exists():
        return {}
    events = read_ledger(ledger_path)
    fresh = recompute(events)
    if fresh.worst_relative_error > LEDGER_TOLERANCE:
        raise LedgerError(
            f"{ledger_path}: a recorded ε differs from its recomputation by "
            f"{fresh.worst_relative_error:.3g} (relative, tolerance {LEDGER_TOLERANCE}); the "
            "ledger is inconsistent (altered, or written by another accountant version) and no "
            "privacy summary is reported from it. Recompute it with "
            "pollinate.shared.privacy.ledger.recompute to find the event"
        )
    out: dict[str, Any] = {"worst_relative_error": fresh.worst_relative_error}
    local = [e for e in events if e.layer == "local"]
    user = [e for e in events if e.layer == "user"]
    if local:
        eps = list(fresh.local.values())
        out["local"] = {
            "unit": "interaction",
            "neighbouring": _relation(local),
            "epsilon_max": max(eps),
            "epsilon_median": statistics.median(eps),
            "delta": max(e.delta for e in local),
            "devices_accounted": len(eps),
            "devices_trained": len({e.device for e in local if e.kind == "train"}),
            "devices": n_devices,
            "events": _counts(local),
            "accountant": sorted({e.accountant for e in local}),
        }
    if user:
        last = max(user, key=lambda e: (e.round, e.kind != "train"))
        out["user"] = {
            "unit": "user",
            "neighbouring": _relation(user),
            "epsilon": fresh.user,
            "delta": last.delta,
            "rounds_released": sum(1 for e in user if e.kind == "train"),
            "events": _counts(user),
            "accountant": last.accountant,
        }
    return out


#: What each DP layer guarantees, stated once for metrics.json and release/privacy.json.
LAYER_GUARANTEES: dict[str, dict[str, Any]] = {
    "local": {
        "unit": "one interaction (a rating, a view) of one user",
        "neighbouring": "replace_one: one interaction changed; the device's number of "
        "interactions is treated as public",
        "protects_against": "the server and everyone who sees what devices send or what "
        "the server releases",
        "trusted": "the device alone; its policy (node config), never a server message, "
        "sets its noise, clip, δ and budget",
        "accounted": "every DP-SGD round of every device and every noised evaluation reply "
        "(ledger kinds 'train' and 'evaluate'), over the device's whole life",
        "not_covered": "the number of interactions a device has; that a device took part; "
        "model, hyper-parameter and round-count choices made on the same users' data",
    },
    "user": {
        "unit": "one user: everything on one device",
        "neighbouring": "add_remove: one user's participation (Poisson-sampled at rate q)",
        "protects_against": "everyone who sees the released model (the iterates the server "
        "sends out, and the final model)",
        "trusted": "the server: it sees each sampled device's raw update (sparse: it shows "
        "which items the device touched) and its evaluation sums",
        "accounted": "every server round, including rounds no device joined",
        "not_covered": "the devices' evaluation sums (un-noised, kept in the operator files); "
        "model, hyper-parameter and round-count choices made on the same users' data",
    },
}


def guarantees(dp: str) -> dict[str, dict[str, Any]]:
    """The guarantee of each layer that ``dp`` turns on (empty without DP)."""
    layers = {"local": ("local",), "user": ("user",), "both": ("local", "user")}.get(dp, ())
    return {layer: dict(LAYER_GUARANTEES[layer]) for layer in layers}
