"""The privacy ledger: one immutable event per DP release, appended to ``ledger.jsonl``.

Each line holds what an auditor needs to recompute ε without models or Flower: layer,
unit of privacy, round, device (local events), mechanism, noise multiplier, sampling
rate, steps, clip norm, δ, accountant, library versions, and ε cumulative for that
device (local) or for the server (user) after the event.

:class:`LedgerWriter` appends with ``fsync`` *before* the release leaves: a device that
crashes after writing and before sending over-counts its ε, never under-counts it.
:func:`recompute` re-derives every cumulative ε from the events alone.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.accounting import (
    local_epsilon,
    user_accountant,
    user_round_event,
)
from pollinate.shared.versions import package_version

Layer = Literal["local", "user"]


class LedgerError(PollinateError):
    """The ledger is malformed or inconsistent."""


#: The libraries whose versions every ledger event carries.
LEDGER_LIBRARIES = ("opacus", "dp-accounting", "torch", "flwr")


def library_versions() -> dict[str, str]:
    return {lib: package_version(lib) or "absent" for lib in LEDGER_LIBRARIES}


@dataclass(frozen=True)
class LedgerEvent:
    layer: Layer
    unit: Literal["interaction", "user"]
    round: int
    mechanism: str
    noise_multiplier: float
    sample_rate: float
    steps: int
    clip_norm: float
    delta: float
    accountant: str
    epsilon: float
    device: str | None = None
    versions: dict[str, str] = field(default_factory=library_versions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LedgerEvent:
        known = set(cls.__dataclass_fields__)
        missing = sorted(k for k in known - {"device", "versions"} if k not in raw)
        if missing:
            raise LedgerError(f"ledger event lacks {missing}: {dict(raw)}")
        return cls(**{k: raw[k] for k in known if k in raw})


LOCAL_MECHANISM = "DP-SGD (Opacus): Poisson-sampled, per-example clipped Gaussian"


def local_event(
    *,
    round_: int,
    device: str,
    release: tuple[float, float, int],
    clip_norm: float,
    delta: float,
    accountant: str,
    epsilon: float,
) -> LedgerEvent:
    """The event of one device round; ``release`` is its ``(noise, sample_rate, steps)``."""
    noise, rate, steps = release
    return LedgerEvent(
        layer="local",
        unit="interaction",
        round=round_,
        device=device,
        mechanism=LOCAL_MECHANISM,
        noise_multiplier=noise,
        sample_rate=rate,
        steps=steps,
        clip_norm=clip_norm,
        delta=delta,
        accountant=f"opacus-{accountant}",
        epsilon=epsilon,
    )


class LedgerWriter:
    """Append-only, fsync'ed JSON lines: the write-ahead log of DP releases."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def append(self, event: LedgerEvent) -> None:
        with self.path.open("a") as fh:
            fh.write(event.to_json() + "\n")
            fh.flush()
            os.fsync(fh.fileno())


def read_ledger(path: Path) -> list[LedgerEvent]:
    events = []
    for n, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            events.append(LedgerEvent.from_mapping(json.loads(line)))
        except (json.JSONDecodeError, TypeError) as exc:
            raise LedgerError(f"{path}, line {n}: not a ledger event ({exc})") from exc
    return events


@dataclass(frozen=True)
class Recomputed:
    local: dict[str, float]  # device -> ε after its last event
    user: float | None
    worst_relative_error: float  # between recorded and recomputed cumulative ε


def recompute(events: Iterable[LedgerEvent]) -> Recomputed:
    """Re-derive every cumulative ε from the events alone and compare with the record."""
    by_device: dict[str, list[LedgerEvent]] = defaultdict(list)
    user_events: list[LedgerEvent] = []
    for e in events:
        if e.layer == "local":
            by_device[str(e.device)].append(e)
        else:
            user_events.append(e)
    worst = 0.0

    def err(recorded: float, fresh: float) -> float:
        return abs(recorded - fresh) / max(fresh, 1e-12)

    local: dict[str, float] = {}
    for device, evs in by_device.items():
        evs.sort(key=lambda e: e.round)
        history: list[tuple[float, float, int]] = []
        for e in evs:
            history.append((e.noise_multiplier, e.sample_rate, e.steps))
            fresh = local_epsilon(history, e.delta, "prv" if "prv" in e.accountant else "rdp")
            worst = max(worst, err(e.epsilon, fresh))
        local[device] = fresh
    user: float | None = None
    if user_events:
        user_events.sort(key=lambda e: e.round)
        kind = "pld" if "pld" in user_events[-1].accountant else "rdp"
        acc = user_accountant(kind)  # type: ignore[arg-type]
        for e in user_events:
            acc.compose(user_round_event(e.noise_multiplier, e.sample_rate))
            user = float(acc.get_epsilon(e.delta))
            worst = max(worst, err(e.epsilon, user))
    return Recomputed(local, user, worst)
