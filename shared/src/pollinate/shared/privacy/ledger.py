"""The privacy ledger: one immutable event per DP release, appended to ``ledger.jsonl``.

Each line holds what an auditor needs to recompute ε without models or Flower: layer,
unit of privacy, neighbouring relation, kind of release, round, device (local events),
mechanism, noise multiplier, sampling rate, steps, clip norm, δ, accountant, library
versions, and ε cumulative for that device (local) or for the server (user) after the
event.

* ``layer="local"``: unit one interaction, ``neighbouring="replace_one"`` (the device's
  example count is public), accountant ``dp-accounting-pld``. ``kind="train"`` is a
  DP-SGD round (``steps`` Poisson-sampled Gaussian steps); ``kind="evaluate"`` an
  evaluation release (a plain Gaussian: sample rate 1, one step).
* ``layer="user"``: unit one user, ``neighbouring="add_remove"`` (a device is sampled in
  or out), accountant ``dp-accounting-pld`` or ``dp-accounting-rdp``.

Ledgers written before the two fields existed read as ``neighbouring="add_remove"`` and
``kind="train"``, which is what they were (their local events name an Opacus
accountant, which :func:`recompute` still evaluates).

:class:`LedgerWriter` appends with ``fsync`` *before* the release leaves: a device that
crashes after writing and before sending over-counts its ε, never under-counts it.
:func:`recompute` re-derives every cumulative ε from the events alone, composing each
party's events in (round, train before evaluate) order with the accountant and relation
each event names.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.accounting import (
    CanonicalHistory,
    Neighbouring,
    canonical_history,
    check_local_accountant,
    history_epsilon,
)
from pollinate.shared.versions import package_version

Layer = Literal["local", "user"]
Kind = Literal["train", "evaluate"]

NEIGHBOURING: tuple[Neighbouring, ...] = ("add_remove", "replace_one")
KINDS: tuple[Kind, ...] = ("train", "evaluate")
#: Within one round a device's training is composed before its evaluation.
_KIND_ORDER = {"train": 0, "evaluate": 1}


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
    #: Absent in ledgers written before it existed, whose events were all add/remove.
    neighbouring: Neighbouring = "add_remove"
    #: Absent in ledgers written before it existed, whose events were all training.
    kind: Kind = "train"
    versions: dict[str, str] = field(default_factory=library_versions)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> LedgerEvent:
        known = set(cls.__dataclass_fields__)
        optional = {"device", "versions", "neighbouring", "kind"}
        missing = sorted(k for k in known - optional if k not in raw)
        if missing:
            raise LedgerError(f"ledger event lacks {missing}: {dict(raw)}")
        if raw.get("layer") not in ("local", "user"):
            raise LedgerError(f"ledger event has layer {raw.get('layer')!r}, not local or user")
        if raw.get("neighbouring", "add_remove") not in NEIGHBOURING:
            raise LedgerError(
                f"ledger event has neighbouring {raw.get('neighbouring')!r}, not one of "
                f"{list(NEIGHBOURING)}"
            )
        if raw.get("kind", "train") not in KINDS:
            raise LedgerError(
                f"ledger event has kind {raw.get('kind')!r}, not one of {list(KINDS)}"
            )
        return cls(**{k: raw[k] for k in known if k in raw})


LOCAL_MECHANISM = "DP-SGD (Opacus): Poisson-sampled, per-example clipped Gaussian"
LOCAL_EVAL_MECHANISM = "Gaussian mechanism on clipped evaluation sums (not subsampled)"
LOCAL_ACCOUNTANT = "dp-accounting-pld"


def local_event(
    *,
    round_: int,
    device: str,
    release: tuple[float, float, int],
    clip_norm: float,
    delta: float,
    epsilon: float,
    kind: Kind = "train",
    accountant: str = "pld",
    mechanism: str | None = None,
) -> LedgerEvent:
    """The event of one device release; ``release`` is its ``(noise, sample_rate, steps)``.

    ``kind="train"``: a DP-SGD round; ``kind="evaluate"``: an evaluation release, a plain
    Gaussian, so ``release`` is ``(z_e, 1.0, 1)``. Always replace-one neighbours and
    dp-accounting's PLD (``accountant`` is checked, and only ``"pld"`` passes);
    ``epsilon`` is the device's cumulative ε with this release
    (:func:`pollinate.shared.privacy.accounting.local_epsilon`).
    """
    check_local_accountant(accountant)
    if kind not in KINDS:
        raise LedgerError(f"kind must be one of {list(KINDS)}, got {kind!r}")
    noise, rate, steps = release
    if kind == "evaluate" and (rate != 1.0 or steps != 1):
        raise LedgerError(
            f"an evaluation release is one plain Gaussian, (z_e, 1.0, 1); got {release}"
        )
    return LedgerEvent(
        layer="local",
        unit="interaction",
        round=round_,
        device=device,
        mechanism=mechanism or (LOCAL_MECHANISM if kind == "train" else LOCAL_EVAL_MECHANISM),
        noise_multiplier=noise,
        sample_rate=rate,
        steps=steps,
        clip_norm=clip_norm,
        delta=delta,
        accountant=LOCAL_ACCOUNTANT,
        epsilon=epsilon,
        neighbouring="replace_one",
        kind=kind,
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
        except (json.JSONDecodeError, TypeError, AttributeError) as exc:
            raise LedgerError(f"{path}, line {n}: not a ledger event ({exc})") from exc
        except LedgerError as exc:
            raise LedgerError(f"{path}, line {n}: {exc}") from exc
    return events


@lru_cache(maxsize=4096)
def _opacus_epsilon(history: CanonicalHistory, delta: float, kind: str) -> float:
    """Opacus's add/remove RDP or PRV ε, for ledgers written before replace-one."""
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = PRVAccountant() if kind == "prv" else RDPAccountant()
    acc.history.extend(history)
    return float(acc.get_epsilon(delta))


def event_epsilon(
    history: Sequence[tuple[float, float, int]],
    delta: float,
    neighbouring: str,
    accountant: str,
) -> float:
    """ε of ``history`` with the accountant and relation a ledger event names.

    ``dp-accounting-pld`` / ``dp-accounting-rdp`` under either relation (replace-one needs
    PLD); ``opacus-rdp`` / ``opacus-prv`` (add/remove only) for old ledgers.
    """
    if neighbouring not in NEIGHBOURING:
        raise LedgerError(f"unknown neighbouring relation {neighbouring!r}")
    name = accountant.lower()
    if name in ("dp-accounting-pld", "dp-accounting-rdp"):
        kind = name.removeprefix("dp-accounting-")
        return history_epsilon(history, delta, neighbouring, kind)  # type: ignore[arg-type]
    if name in ("opacus-rdp", "opacus-prv"):
        if neighbouring != "add_remove":
            raise LedgerError(
                f"{accountant} accounts add/remove neighbours only, not {neighbouring}"
            )
        key = canonical_history(history)
        return _opacus_epsilon(key, float(delta), name.removeprefix("opacus-")) if key else 0.0
    raise LedgerError(
        f"unknown accountant {accountant!r}; expected dp-accounting-pld, dp-accounting-rdp, "
        "opacus-rdp or opacus-prv"
    )


@dataclass(frozen=True)
class Recomputed:
    local: dict[str, float]  # device -> ε after its last event
    user: float | None
    worst_relative_error: float  # between recorded and recomputed cumulative ε


def _relative_error(recorded: float, fresh: float) -> float:
    if recorded == fresh:
        return 0.0
    return abs(recorded - fresh) / max(abs(fresh), 1e-12)


def _compose(party: str, events: list[LedgerEvent]) -> tuple[float, float]:
    """The party's ε after its last event, and the worst error over its events."""
    events = sorted(events, key=lambda e: (e.round, _KIND_ORDER[e.kind]))
    relations = {(e.neighbouring, e.accountant) for e in events}
    if len(relations) > 1:
        raise LedgerError(
            f"{party}: events name different relations/accountants {sorted(relations)}; one "
            "party's releases compose under one relation and accountant"
        )
    history: list[tuple[float, float, int]] = []
    worst, fresh = 0.0, 0.0
    for e in events:
        history.append((e.noise_multiplier, e.sample_rate, e.steps))
        fresh = event_epsilon(history, e.delta, e.neighbouring, e.accountant)
        worst = max(worst, _relative_error(e.epsilon, fresh))
    return fresh, worst


def recompute(events: Iterable[LedgerEvent]) -> Recomputed:
    """Re-derive every cumulative ε from the events alone and compare with the record.

    Each device's events (local) and the server's (user) are composed in (round, train
    before evaluate) order, evaluation releases like the others, with the accountant and
    neighbouring relation each event names. ε is cached per distinct history, so devices
    with the same releases cost one computation.
    """
    by_device: dict[str, list[LedgerEvent]] = defaultdict(list)
    user_events: list[LedgerEvent] = []
    for e in events:
        if e.layer == "local":
            by_device[str(e.device)].append(e)
        else:
            user_events.append(e)
    worst = 0.0
    local: dict[str, float] = {}
    for device, evs in by_device.items():
        local[device], err = _compose(f"device {device}", evs)
        worst = max(worst, err)
    user: float | None = None
    if user_events:
        user, err = _compose("server (user level)", user_events)
        worst = max(worst, err)
    return Recomputed(local, user, worst)
