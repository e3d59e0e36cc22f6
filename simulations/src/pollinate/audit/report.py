"""The audit report of a run directory: what was promised, recomputed, and what left.

:func:`build_report` reads a directory written by ``pollinate simulate`` (``ledger.jsonl``,
``messages.jsonl``, ``metrics.json``, ``metrics.jsonl``, ``config.json`` and
``release/``) and returns a dict that follows ``report.schema.json`` (JSON Schema draft
2020-12, shipped beside this module; :func:`load_schema`). :func:`write_report` writes it
as ``report.json`` and as one self-contained ``report.html``.

The report is built for an auditor who trusts nothing but recomputation:

* every cumulative ε in the ledger is recomputed **here**, with dp-accounting's own
  accountants (``PLDAccountant``, ``RdpAccountant``) and Opacus for events that name an
  Opacus accountant, never with the project's accounting code; a relative difference
  over 1e-6 fails the report;
* the message log is read for what actually left the devices (array names, shapes,
  bytes, the share of item-table rows each upload changed), and the allow-list is
  re-checked on it;
* the realised cohort sizes are tested against Binomial(N, q);
* the trust model is checked: a run whose noise or sampling came from a seed fails.

This slice computes the static part of the report. The empirical audit (canaries, the
one-run ε lower bound) and the membership-inference attacks are not run: their entries
carry ``null`` figures and a status that says so, the ``empirical audit run`` check
fails, and so no DP run passes yet (``verdict: "fail"``). A run without DP is
``not-private``.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
from dp_accounting import pld, rdp

from pollinate.audit.empirical import interaction_level_audit, user_level_audit
from pollinate.audit.errors import AuditError
from pollinate.server.audit_material import HOLDOUT_FILE, UPLOADS_FILE
from pollinate.server.canaries import CANARY_FILE
from pollinate.shared.privacy.interaction_canaries import FILE as INTERACTION_FILE

__all__ = [
    "RECOMPUTE_TOLERANCE",
    "REPORT_VERSION",
    "build_report",
    "load_schema",
    "write_report",
]

#: The version of the report's schema (``report.schema.json``).
REPORT_VERSION = 1
#: Largest relative difference between a recorded and a recomputed ε that passes.
RECOMPUTE_TOLERANCE = 1e-6
#: The δ grid of the privacy profile ε(δ) (the run's own δ is added to it).
PROFILE_DELTAS = tuple(10.0**-k for k in range(2, 13))
#: Bins of the per-device ε histogram.
HISTOGRAM_BINS = 10
#: A cohort-size test below this p-value fails the sampling check (a false alarm in one
#: run out of a thousand honest ones).
SAMPLING_ALPHA = 1e-3
#: PLD value discretisation by neighbouring relation. The ledger does not record it: these
#: are what Pollinate's accountants use (dp-accounting's default 1e-4 for the user level,
#: 1e-3 for the replace-one interaction level). dp-accounting's discretisation is
#: pessimistic, so a coarser grid can only over-state ε.
PLD_INTERVAL = {"add_remove": 1e-4, "replace_one": 1e-3}
#: Below this noise multiplier a replace-one PLD needs gigabytes, and ε is far beyond any
#: meaningful guarantee: such a history is taken to have ε = ∞ (no guarantee claimed).
REPLACE_ONE_MIN_NOISE = 0.3
#: Parameter name prefixes treated as private when the model's own declaration cannot be
#: read (every built-in model's private parameters start with ``user_``).
FALLBACK_LOCAL_PREFIXES = ("user_",)

_EMPIRICAL_NOT_RUN = {
    "user": "not run: the run has no canaries (run pollinate simulate with --audit-canaries M)",
    "local": "not run: the run has no canaries (run pollinate simulate with --audit-canaries M)",
}
_MIA_NOT_RUN = (
    "not run: the run kept no attack material (make it with --audit-canaries M, and "
    "--audit-holdout F for the release attack)"
)
_KIND_ORDER = {"train": 0, "evaluate": 1}
_LAYERS = ("local", "user")


def load_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) that every report follows."""
    text = resources.files("pollinate.audit").joinpath("report.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


# --------------------------------------------------------------------------- reading


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise AuditError(
            f"{path} is missing: is this a run directory of pollinate simulate?"
        ) from exc
    except json.JSONDecodeError as exc:
        raise AuditError(f"{path} is not JSON ({exc})") from exc


def _read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The lines of a JSON-lines file, and a description of each line that did not parse."""
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    if not path.exists():
        return rows, errors
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            errors.append(f"{path.name}, line {n}: not JSON ({exc})")
            continue
        if not isinstance(row, dict):
            errors.append(f"{path.name}, line {n}: not an object")
            continue
        rows.append(row)
    return rows, errors


def _version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _finite(x: float | None) -> float | None:
    """``x`` where JSON can carry it; ``None`` for an infinite or undefined value."""
    if x is None or not math.isfinite(x):
        return None
    return float(x)


# ---------------------------------------------------------------------- recomputation


@dataclass(frozen=True)
class _Event:
    layer: str
    party: str
    round: int
    kind: str
    noise: float
    rate: float
    steps: int
    clip: float
    delta: float
    neighbouring: str
    accountant: str
    epsilon: float
    unit: str
    mechanism: str
    versions: Mapping[str, str]


_REQUIRED = (
    "layer",
    "round",
    "noise_multiplier",
    "sample_rate",
    "steps",
    "clip_norm",
    "delta",
    "accountant",
    "epsilon",
)


def _parse_event(raw: Mapping[str, Any]) -> _Event:
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise ValueError(f"lacks {missing}")
    layer = raw["layer"]
    if layer not in _LAYERS:
        raise ValueError(f"layer {layer!r} is not local or user")
    kind = raw.get("kind", "train")
    if kind not in _KIND_ORDER:
        raise ValueError(f"kind {kind!r} is not train or evaluate")
    return _Event(
        layer=layer,
        party=str(raw.get("device")) if layer == "local" else "server",
        round=int(raw["round"]),
        kind=kind,
        noise=float(raw["noise_multiplier"]),
        rate=float(raw["sample_rate"]),
        steps=int(raw["steps"]),
        clip=float(raw["clip_norm"]),
        delta=float(raw["delta"]),
        neighbouring=str(raw.get("neighbouring", "add_remove")),
        accountant=str(raw["accountant"]).lower(),
        epsilon=float(raw["epsilon"]),
        unit=str(raw.get("unit", "user" if layer == "user" else "interaction")),
        mechanism=str(raw.get("mechanism", "")),
        versions=dict(raw.get("versions") or {}),
    )


Canonical = tuple[tuple[float, float, int], ...]


def _canonical(history: Iterable[tuple[float, float, int]]) -> Canonical:
    """Equal (z, q) merged with their steps summed, sorted: every composition used here is
    commutative, so this has the history's ε (and keys the cache)."""
    totals: dict[tuple[float, float], int] = defaultdict(int)
    for z, q, steps in history:
        if steps < 0:
            raise ValueError(f"negative step count {steps}")
        if steps:
            totals[(z, q)] += steps
    return tuple(sorted((z, q, n) for (z, q), n in totals.items()))


def _relation(neighbouring: str) -> dp_accounting.NeighboringRelation:
    if neighbouring == "add_remove":
        return dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
    if neighbouring == "replace_one":
        return dp_accounting.NeighboringRelation.REPLACE_ONE
    raise ValueError(f"unknown neighbouring relation {neighbouring!r}")


def _dp_event(z: float, q: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(z)
    return gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)


def _accountant(
    history: Canonical, neighbouring: str, accountant: str
) -> dp_accounting.PrivacyAccountant:
    """A dp-accounting accountant with ``history`` composed into it."""
    relation = _relation(neighbouring)
    acc: dp_accounting.PrivacyAccountant
    if accountant == "dp-accounting-pld":
        acc = pld.PLDAccountant(
            neighboring_relation=relation,
            value_discretization_interval=PLD_INTERVAL[neighbouring],
        )
    elif accountant == "dp-accounting-rdp":
        if neighbouring != "add_remove":
            raise ValueError("dp-accounting's RDP accountant does not account replace-one here")
        acc = rdp.RdpAccountant(neighboring_relation=relation)
    else:
        raise ValueError(f"not a dp-accounting accountant: {accountant!r}")
    for z, q, steps in history:
        acc.compose(_dp_event(z, q), steps)
    return acc


def _opacus_epsilon(history: Canonical, delta: float, kind: str) -> float:
    from opacus.accountants import PRVAccountant, RDPAccountant

    acc = PRVAccountant() if kind == "prv" else RDPAccountant()
    acc.history.extend(history)
    return float(acc.get_epsilon(delta))


@cache
def _epsilon(history: Canonical, delta: float, neighbouring: str, accountant: str) -> float:
    """ε of ``history`` at ``delta`` with the accountant and relation an event names."""
    if not history:
        return 0.0
    if neighbouring == "replace_one" and history[0][0] < REPLACE_ONE_MIN_NOISE:
        return math.inf
    if accountant in ("opacus-rdp", "opacus-prv"):
        if neighbouring != "add_remove":
            raise ValueError(f"{accountant} accounts add/remove neighbours only")
        return _opacus_epsilon(history, delta, accountant.removeprefix("opacus-"))
    return float(_accountant(history, neighbouring, accountant).get_epsilon(delta))


def _relative_error(recorded: float, fresh: float) -> float:
    if recorded == fresh:
        return 0.0
    if math.isinf(recorded) or math.isinf(fresh):
        return math.inf
    return abs(recorded - fresh) / max(abs(fresh), 1e-12)


@dataclass
class _Party:
    """One party's (a device's or the server's) events, recomputed."""

    events: list[_Event]
    recorded: list[float]
    fresh: list[float]
    worst: float
    history: Canonical
    error: str | None = None

    @property
    def last_recorded(self) -> float:
        return self.recorded[-1] if self.recorded else 0.0

    @property
    def last_fresh(self) -> float:
        return self.fresh[-1] if self.fresh else 0.0


def _recompute_party(events: list[_Event]) -> _Party:
    events = sorted(events, key=lambda e: (e.round, _KIND_ORDER[e.kind]))
    relations = {(e.neighbouring, e.accountant) for e in events}
    history: list[tuple[float, float, int]] = []
    fresh: list[float] = []
    worst = 0.0
    error = None
    if len(relations) > 1:
        error = f"events name different relations/accountants {sorted(relations)}"
        worst = math.inf
    for e in events:
        history.append((e.noise, e.rate, e.steps))
        try:
            value = _epsilon(_canonical(history), e.delta, e.neighbouring, e.accountant)
        except (ValueError, TypeError) as exc:
            error, value = str(exc), math.nan
        fresh.append(value)
        err = _relative_error(e.epsilon, value) if math.isfinite(value) else math.inf
        if math.isinf(value) and math.isinf(e.epsilon):
            err = 0.0
        worst = max(worst, err)
    return _Party(events, [e.epsilon for e in events], fresh, worst, _canonical(history), error)


# ------------------------------------------------------------------------ the layers


def _versions(events: Sequence[_Event]) -> dict[str, list[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for e in events:
        for lib, v in e.versions.items():
            seen[lib].add(str(v))
    return {lib: sorted(vs) for lib, vs in sorted(seen.items())}


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return {"min": None, "median": None, "max": None}
    return {
        "min": float(min(finite)),
        "median": float(statistics.median(finite)),
        "max": float(max(finite)),
    }


def _profile(history: Canonical, neighbouring: str, accountant: str, delta: float) -> list[Any]:
    """ε(δ) on PROFILE_DELTAS and the run's δ, from one composed accountant."""
    deltas = sorted({*PROFILE_DELTAS, delta}, reverse=True)
    if not history:
        return [{"delta": d, "epsilon": 0.0} for d in deltas]
    if accountant.startswith("opacus-") or (
        neighbouring == "replace_one" and history[0][0] < REPLACE_ONE_MIN_NOISE
    ):
        return [
            {"delta": d, "epsilon": _finite(_epsilon(history, d, neighbouring, accountant))}
            for d in deltas
        ]
    acc = _accountant(history, neighbouring, accountant)
    return [{"delta": d, "epsilon": _finite(float(acc.get_epsilon(d)))} for d in deltas]


def _raw_parameters(events: Sequence[_Event], rounds: int | None) -> dict[str, Any]:
    def distinct(values: Iterable[float]) -> list[float]:
        return sorted({float(v) for v in values})

    train = [e for e in events if e.kind == "train"]
    evaluate = [e for e in events if e.kind == "evaluate"]
    return {
        "noise_multiplier": distinct(e.noise for e in train),
        "clip_norm": distinct(e.clip for e in train),
        "sample_rate": distinct(e.rate for e in train),
        "steps_per_release": distinct(e.steps for e in train),
        "steps_total": int(sum(e.steps for e in events)),
        "eval_noise_multiplier": distinct(e.noise for e in evaluate),
        "rounds": rounds,
        "events": {"train": len(train), "evaluate": len(evaluate)},
        "sampling_method": "Poisson",
        "mechanism": sorted({e.mechanism for e in events if e.mechanism}),
    }


def _recomputation_method(events: Sequence[_Event]) -> list[str]:
    out = []
    for neighbouring, accountant in sorted({(e.neighbouring, e.accountant) for e in events}):
        if accountant == "dp-accounting-pld":
            out.append(
                f"dp-accounting {_version('dp-accounting')} PLDAccountant({neighbouring}, "
                f"value_discretization_interval={PLD_INTERVAL.get(neighbouring)}), each party's "
                "events composed in (round, train before evaluate) order"
            )
        elif accountant == "dp-accounting-rdp":
            out.append(f"dp-accounting {_version('dp-accounting')} RdpAccountant({neighbouring})")
        else:
            out.append(f"Opacus {_version('opacus')} {accountant.removeprefix('opacus-')}")
    return out


def _local_layer(
    events: list[_Event],
    n_devices: int | None,
    rounds: int | None,
    history: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    guarantee: Mapping[str, Any],
) -> tuple[dict[str, Any], float, list[str]]:
    by_device: dict[str, list[_Event]] = defaultdict(list)
    for e in events:
        by_device[e.party].append(e)
    parties = {d: _recompute_party(evs) for d, evs in by_device.items()}
    errors = [f"device {d}: {p.error}" for d, p in sorted(parties.items()) if p.error]
    worst = max((p.worst for p in parties.values()), default=0.0)
    recorded = [p.last_recorded for p in parties.values()]
    fresh = [p.last_fresh for p in parties.values()]
    finite = [v for v in recorded if math.isfinite(v)]
    counts: list[int] = []
    edges: list[float] = []
    if finite:
        hist, bins = np.histogram(finite, bins=HISTOGRAM_BINS)
        counts, edges = [int(c) for c in hist], [float(x) for x in bins]
    worst_device = max(parties, key=lambda d: parties[d].last_fresh, default=None)
    deltas = [e.delta for e in events]
    profile: list[Any] = []
    if worst_device is not None:
        wp = parties[worst_device]
        profile = _profile(
            wp.history, wp.events[-1].neighbouring, wp.events[-1].accountant, wp.events[-1].delta
        )
    stopped_rounds = {
        int(h["round"]): int(h.get("dp_stopped") or 0)
        for h in history
        if int(h.get("round", 0)) >= 1 and h.get("dp_stopped")
    }
    stopped_nodes = sorted(
        {
            str(m.get("node"))
            for m in messages
            if m.get("direction") == "up" and "dp-stopped" in (m.get("metrics") or [])
        }
    )
    layer = {
        "unit": events[0].unit if events else "interaction",
        "unit_statement": guarantee.get("unit"),
        "neighbouring": sorted({e.neighbouring for e in events}),
        "neighbouring_statement": guarantee.get("neighbouring"),
        "epsilon": _finite(max(recorded, default=0.0)),
        "epsilon_recomputed": _finite(max(fresh, default=0.0)),
        "epsilon_is_of": "the device with the largest ε (each device's ε after its last release)",
        "delta": max(deltas) if deltas else None,
        "delta_range": {"min": min(deltas), "max": max(deltas)} if deltas else None,
        "worst_relative_error": _finite(worst),
        "accountant": sorted({e.accountant for e in events}),
        "recomputation": _recomputation_method(events),
        "versions": _versions(events),
        "parameters": _raw_parameters(events, rounds),
        "devices": {
            "total": n_devices,
            "accounted": len(parties),
            "without_release": (n_devices - len(parties)) if n_devices is not None else None,
            "epsilon": _spread(recorded),
            "epsilon_recomputed": _spread(fresh),
            "histogram": {
                "bin_edges": edges,
                "counts": counts,
            },
            "worst_device": worst_device,
        },
        "budget_stopped": {
            "total": int(sum(stopped_rounds.values())),
            "by_round": {str(r): n for r, n in sorted(stopped_rounds.items())},
            "nodes": stopped_nodes,
        },
        "privacy_profile": profile,
        "privacy_profile_of": f"device {worst_device}" if worst_device is not None else None,
    }
    return layer, worst, errors


def _user_layer(
    events: list[_Event],
    rounds: int | None,
    guarantee: Mapping[str, Any],
    opacus_cross_check: bool,
) -> tuple[dict[str, Any], float, list[str], _Party]:
    party = _recompute_party(events)
    errors = [f"server: {party.error}"] if party.error else []
    last = party.events[-1] if party.events else None
    per_round = [
        {
            "round": e.round,
            "kind": e.kind,
            "epsilon": _finite(rec),
            "epsilon_recomputed": _finite(new),
        }
        for e, rec, new in zip(party.events, party.recorded, party.fresh, strict=True)
    ]
    cross: dict[str, Any] = {"opacus_rdp": None, "note": ""}
    if last is not None and last.neighbouring == "add_remove" and opacus_cross_check:
        try:
            cross["opacus_rdp"] = _finite(_opacus_epsilon(party.history, last.delta, "rdp"))
            cross["note"] = (
                "Opacus's RDP accountant on the same history: a looser bound by another "
                "method, shown beside the PLD/RDP recomputation, not compared at 1e-6"
            )
        except ImportError:
            cross["note"] = "Opacus is not installed here"
    profile = (
        _profile(party.history, last.neighbouring, last.accountant, last.delta)
        if last is not None
        else []
    )
    layer = {
        "unit": last.unit if last else "user",
        "unit_statement": guarantee.get("unit"),
        "neighbouring": sorted({e.neighbouring for e in events}),
        "neighbouring_statement": guarantee.get("neighbouring"),
        "epsilon": _finite(party.last_recorded),
        "epsilon_recomputed": _finite(party.last_fresh),
        "epsilon_is_of": "the server's releases, after the last round",
        "delta": last.delta if last else None,
        "delta_range": (
            {"min": min(e.delta for e in events), "max": max(e.delta for e in events)}
            if events
            else None
        ),
        "worst_relative_error": _finite(party.worst),
        "accountant": sorted({e.accountant for e in events}),
        "recomputation": _recomputation_method(events),
        "versions": _versions(events),
        "parameters": _raw_parameters(events, rounds),
        "epsilon_per_round": per_round,
        "cross_check": cross,
        "privacy_profile": profile,
        "privacy_profile_of": "the server's releases",
    }
    return layer, party.worst, errors, party


# ------------------------------------------------------------------ what left devices


def _local_prefixes(model: str | None) -> tuple[tuple[str, ...], str]:
    """The model's private parameter prefixes, from its own declaration where it loads."""
    if model:
        try:
            from pollinate.shared.models import base

            factory = base._REGISTRY.get(model)
            prefixes = getattr(factory, "LOCAL_PREFIXES", None)
            if prefixes is not None:
                return tuple(prefixes), f"the {model!r} model's declaration (LOCAL_PREFIXES)"
        except ImportError:
            pass
    return FALLBACK_LOCAL_PREFIXES, "the fallback prefix user_ (the model did not load here)"


def _allow_list(messages: list[dict[str, Any]], model: str | None) -> dict[str, Any]:
    prefixes, source = _local_prefixes(model)
    down: dict[str, tuple[int, ...]] = {}
    down_conflicts: set[str] = set()
    for m in messages:
        if m.get("direction") == "down" and m.get("kind") == "train":
            for name, shape in (m.get("arrays") or {}).items():
                if name in down and down[name] != tuple(shape):
                    down_conflicts.add(name)
                down[name] = tuple(shape)
    ups = [m for m in messages if m.get("direction") == "up"]
    local_up: set[str] = set()
    mismatched: list[str] = []
    names_up: set[str] = set()
    for m in ups:
        for name, shape in (m.get("arrays") or {}).items():
            names_up.add(name)
            if name.startswith(prefixes):
                local_up.add(name)
            if down.get(name) != tuple(shape):
                mismatched.append(
                    f"node {m.get('node')} round {m.get('round')}: {name} {list(shape)}"
                )
    return {
        "local_prefixes": list(prefixes),
        "local_prefixes_source": source,
        "global_arrays": {n: list(s) for n, s in sorted(down.items())},
        "arrays_up": sorted(names_up),
        "local_names_up": sorted(local_up),
        "mismatched": mismatched[:20],
        "mismatched_count": len(mismatched),
        "down_conflicts": sorted(down_conflicts),
        "up_messages": len(ups),
    }


def _leakage(messages: list[dict[str, Any]], dp: str) -> dict[str, Any]:
    ups = [m for m in messages if m.get("direction") == "up" and m.get("kind") == "train"]
    by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for m in ups:
        by_round[int(m.get("round", 0))].append(m)
    uploads = []
    for r, ms in sorted(by_round.items()):
        sizes = [int(m.get("bytes") or 0) for m in ms]
        shapes: dict[str, list[int]] = {}
        for m in ms:
            shapes.update(m.get("arrays") or {})
        uploads.append(
            {
                "round": r,
                "uploads": len(ms),
                "bytes_total": int(sum(sizes)),
                "bytes": _spread([float(s) for s in sizes]),
                "arrays": shapes,
            }
        )
    with_density = [m for m in ups if isinstance(m.get("row_density"), dict)]
    local = dp in ("local", "both")
    out: dict[str, Any] = {
        "uploads": len(ups),
        "uploads_by_round": uploads,
        "arrays": {},
        "item_table": None,
        "item_table_density": {"min": None, "median": None, "max": None},
        "sparse_uploads": None,
        "dense": None,
        "status": "",
        "statement": "",
    }
    if not ups:
        out["status"] = "no training upload in the message log"
        return out
    if not with_density:
        out["status"] = (
            "not available: the message log does not carry row_density (written by "
            "pollinate.server.runlog from this version on)"
        )
        return out
    per_array: dict[str, list[float]] = defaultdict(list)
    rows: dict[str, int] = {}
    cols: dict[str, int] = {}
    for m in with_density:
        for name, share in m["row_density"].items():
            per_array[name].append(float(share))
            shape = (m.get("arrays") or {}).get(name)
            if shape and len(shape) == 2:
                rows[name], cols[name] = int(shape[0]), int(shape[1])
    arrays = {
        name: {
            "rows": rows.get(name),
            "uploads": len(vals),
            "row_density": _spread(vals),
            "row_density_mean": float(np.mean(vals)),
            "sparse_uploads": int(sum(v < 1.0 for v in vals)),
        }
        for name, vals in sorted(per_array.items())
    }
    # The item table: the 2-D array with the most rows (ties: the widest, then by name),
    # e.g. the item embeddings.
    table = max(sorted(per_array), key=lambda n: (rows.get(n, 0), cols.get(n, 0)))
    vals = per_array[table]
    sparse = int(sum(v < 1.0 for v in vals))
    out.update(
        arrays=arrays,
        item_table=table,
        item_table_density=_spread(vals),
        sparse_uploads=sparse,
        dense=sparse == 0,
        status="computed from row_density in messages.jsonl",
    )
    if sparse == 0:
        out["statement"] = (
            f"every upload changed every row of {table}: the noise of local DP reaches "
            "every item, so an upload does not show which items its device touched"
        )
    else:
        who = "the server" + ("" if local else " (and anyone who sees the uploads)")
        out["statement"] = (
            f"{sparse} of {len(vals)} uploads changed only some rows of {table} (median "
            f"share {statistics.median(vals):.3g}): a sparse upload shows {who} which items "
            "its device trained on"
        )
    return out


# ---------------------------------------------------------------------------- sampling


def _sampling_test(history: list[dict[str, Any]], n: int | None, q: float | None) -> dict[str, Any]:
    sizes = [int(h["sampled"]) for h in history if int(h.get("round", 0)) >= 1 and "sampled" in h]
    out: dict[str, Any] = {
        "method": (
            "exact two-sided binomial test of the total cohort size: under Poisson sampling "
            "the R rounds' sizes sum to Binomial(R·N, q) (scipy.stats.binomtest)"
        ),
        "devices": n,
        "sample_rate": q,
        "rounds": len(sizes),
        "cohort_sizes": sizes,
        "expected_mean": n * q if n is not None and q is not None else None,
        "observed_mean": float(np.mean(sizes)) if sizes else None,
        "p_value": None,
        "alpha": SAMPLING_ALPHA,
        "status": "",
    }
    if not sizes or n is None or q is None or not 0 < q <= 1:
        out["status"] = "not run: no training round, or N or q unknown"
        return out
    from scipy.stats import binomtest

    total = int(sum(sizes))
    trials = len(sizes) * n
    if total > trials or any(s < 0 for s in sizes):
        out["status"] = f"cohort sizes {sizes} exceed N = {n}"
        out["p_value"] = 0.0
        return out
    out["p_value"] = float(min(1.0, binomtest(total, trials, q).pvalue))
    out["status"] = "run"
    return out


# ------------------------------------------------------------------------------ report


def _check(name: str, passed: bool, detail: str) -> dict[str, Any]:
    return {"name": name, "passed": bool(passed), "detail": detail}


def _noise_source(config: Mapping[str, Any], privacy: Mapping[str, Any]) -> tuple[bool, str]:
    sources = []
    for key in ("randomness", "sampling"):
        if isinstance(privacy.get(key), str):
            sources.append(f"{key}: {privacy[key]}")
    for layer in _LAYERS:
        block = privacy.get(layer)
        if isinstance(block, Mapping) and isinstance(block.get("noise_source"), str):
            sources.append(f"{layer}: {block['noise_source']}")
    seeded = config.get("noise-seed") is not None or any("SEEDED" in s for s in sources)
    text = "; ".join(sources) or "the run does not state its noise source"
    if seeded:
        return False, (
            f"SEEDED run (config noise-seed = {config.get('noise-seed')!r}): noise and "
            f"sampling are not private against anyone who knows the seed. {text}"
        )
    if not sources:
        return False, text
    return True, text


def _releases(
    dp: str,
    config: Mapping[str, Any],
    privacy: Mapping[str, Any],
    events: Sequence[_Event],
    messages: list[dict[str, Any]],
    run_dir: Path,
) -> list[dict[str, Any]]:
    local = dp in ("local", "both")
    user = dp in ("user", "both")
    evaluate_events = sum(1 for e in events if e.layer == "local" and e.kind == "evaluate")
    refused = sum(
        1
        for m in messages
        if m.get("direction") == "verdict"
        and m.get("kind") == "evaluate"
        and m.get("verdict") == "refused"
    )
    eval_answers = sum(
        1
        for m in messages
        if m.get("direction") == "up"
        and m.get("kind") == "evaluate"
        and "refused" not in (m.get("metrics") or [])
    )
    out = []
    if local:
        train = (
            "accounted",
            True,
            "noised on the device (DP-SGD) and accounted at the local "
            "layer, composed over each device's life",
        )
    elif user:
        train = (
            "not covered",
            False,
            "raw and sparse to the trusted server; covered only "
            "through the model it produces (user layer)",
        )
    else:
        train = (
            "not covered",
            False,
            "raw and sparse: shows the server which items each device touched",
        )
    out.append(
        {
            "release": "training updates",
            "from": "devices",
            "to": "server",
            "status": train[0],
            "covered": train[1],
            "layer": "local" if local else None,
            "detail": train[2],
        }
    )
    if local:
        mode = config.get("local-evaluation", "refuse")
        if mode == "noised" or evaluate_events:
            ev = (
                "accounted",
                True,
                f"noised sums, composed into each device's ε "
                f"({evaluate_events} ledger events of kind evaluate)",
            )
        else:
            ev = (
                "refused",
                True,
                f"devices refuse evaluation requests ({refused} refusals "
                "logged); nothing about their data is released",
            )
    elif user:
        ev = (
            "not covered",
            False,
            "exact evaluation sums reach the trusted server; they "
            f"stay in the operator's files ({eval_answers} replies)",
        )
    else:
        ev = ("not covered", False, f"exact evaluation sums ({eval_answers} replies)")
    out.append(
        {
            "release": "evaluation replies",
            "from": "devices",
            "to": "server",
            "status": ev[0],
            "covered": ev[1],
            "layer": "local" if local else None,
            "detail": ev[2],
        }
    )
    if user:
        model = (
            "accounted",
            True,
            "every iterate sent to devices and the final model are "
            "outputs of the accounted server rounds (user layer)",
        )
    elif local:
        model = (
            "post-processing",
            True,
            "computed from the devices' noised updates only: "
            "covered by the local layer as post-processing (per interaction, not per user)",
        )
    else:
        model = ("not covered", False, "trained on raw updates")
    present = (run_dir / "release" / "model.npz").exists()
    out.append(
        {
            "release": "the model (iterates and release/model.npz)",
            "from": "server",
            "to": "devices and the public",
            "status": model[0],
            "covered": model[1],
            "layer": "user" if user else ("local" if local else None),
            "detail": model[2] + ("" if present else "; release/model.npz is absent"),
        }
    )
    released_metrics = run_dir / "release" / "metrics.json"
    if released_metrics.exists():
        rm = _read_json(released_metrics)
        final = rm.get("final") if isinstance(rm, Mapping) else None
        if not final:
            util = ("not released", True, "release/metrics.json carries no utility figure")
        elif local:
            util = ("accounted", True, "computed from the devices' noised evaluation releases")
        else:
            util = ("not covered", False, "computed from un-noised evaluation sums")
    else:
        util = ("not released", True, "no release/metrics.json")
    out.append(
        {
            "release": "utility figures (release/metrics.json)",
            "from": "server",
            "to": "the public",
            "status": util[0],
            "covered": util[1],
            "layer": None,
            "detail": util[2],
        }
    )
    out.append(
        {
            "release": "privacy summary and public config (release/privacy.json, config.json)",
            "from": "server",
            "to": "the public",
            "status": "public",
            "covered": True,
            "layer": None,
            "detail": "settings and the ε the ledger gives; chosen by the operator, not computed "
            "from the devices' data (beyond the ε itself)",
        }
    )
    return out


def _scope(dp: str, privacy: Mapping[str, Any]) -> dict[str, Any]:
    guarantees = privacy.get("guarantees") or {}
    accounted = [f"{layer}: {g.get('accounted')}" for layer, g in guarantees.items()]
    not_covered = [f"{layer}: {g.get('not_covered')}" for layer, g in guarantees.items()]
    if dp == "none":
        accounted = []
        not_covered = [
            "everything: updates (which show the items each device touched), evaluation "
            "sums and the model are computed and released without differential privacy"
        ]
    not_covered.append(
        "hyper-parameter tuning, model choice and repeated runs on the same users' data"
    )
    return {
        "dp": dp,
        "accounted": accounted,
        "not_covered": not_covered,
        "evaluation": privacy.get("evaluation"),
        "statement": privacy.get("statement"),
    }


def _trust_model(dp: str, privacy: Mapping[str, Any], noise_detail: str) -> dict[str, Any]:
    guarantees = privacy.get("guarantees") or {}
    layers = {}
    for layer, g in guarantees.items():
        block = privacy.get(layer) or {}
        layers[layer] = {
            "trusted": g.get("trusted"),
            "protects_against": g.get("protects_against"),
            "noise_added": "on the device" if layer == "local" else "on the server",
            "noise_source": block.get("noise_source") if isinstance(block, Mapping) else None,
        }
    return {
        "dp": dp,
        "layers": layers,
        "sampling": privacy.get("sampling"),
        "randomness": privacy.get("randomness"),
        "noise_source_check": noise_detail,
        "who_sees_what": (
            "the server sees every upload and evaluation reply (raw without local DP); "
            "the public sees release/ (model, config, privacy summary, covered metrics); "
            "the operator keeps RUN/ (participants, un-noised statistics, logs)"
        ),
    }


def _utility(
    run_dir: Path,
    metrics: Mapping[str, Any],
    references: Mapping[str, Path | None],
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    from pollinate.audit.utility import reference_figures, segment_utility

    baselines: dict[str, Any] = {}
    for name, path in references.items():
        if path is not None:
            baselines[name] = reference_figures(Path(path))
    segments = segment_utility(run_dir, data)
    plain = baselines.get("without_canaries")
    if plain and plain.get("final"):
        # The canaries' cost: this run's figure minus the same run's without canaries.
        final = metrics.get("final") or {}
        plain["canary_cost"] = {
            k: float(final[k]) - float(v)
            for k, v in plain["final"].items()
            if isinstance(final.get(k), int | float) and isinstance(v, int | float)
        }
    return {
        "final": metrics.get("final") or {},
        "final_se": metrics.get("final_se") or {},
        "final_source": metrics.get("final_source"),
        "task": metrics.get("task"),
        "baselines": baselines or None,
        "segments": segments,
        "status": "run figures from metrics.json; references from the runs given to "
        "pollinate audit (--baseline, --centralized, --without-canaries); segments from the "
        "simulation oracle" + ("" if segments.get("segments") else f" ({segments.get('status')})"),
    }


def _limitations(dp: str, leakage: Mapping[str, Any]) -> list[str]:
    out = []
    if dp != "none":
        out.append(
            "The empirical audit needs canaries (--audit-canaries): canary devices for the "
            "user level, canary interactions for the local level, scored from the released "
            "model only. A run without them cannot pass this report. The canaries' scores "
            "use the final model, not every upload, so the bound is weaker than one an "
            "attacker on each upload could reach; it can only show a leak, never prove none."
        )
        out.append(
            "Recomputation checks the arithmetic of the ledger, not that the mechanism used "
            "the noise it records: only the empirical audit tests that, and a lower bound "
            "below the claim is evidence, not proof."
        )
        out.append(
            "The PLD value discretisation is not in the ledger; the recomputation uses "
            f"Pollinate's ({PLD_INTERVAL['add_remove']} add/remove, "
            f"{PLD_INTERVAL['replace_one']} replace-one). dp-accounting's discretisation is "
            "pessimistic: a coarser grid can only over-state ε."
        )
        out.append(
            "δ is checked against 1/N for the user layer only; a device's δ is tied to its "
            "own number of interactions, which the run files do not carry."
        )
    else:
        out.append(
            "Without differential privacy nothing is accounted: the run's updates, "
            "evaluation sums and model are not protected."
        )
    if leakage.get("sparse_uploads"):
        out.append("Sparse uploads show the server which items a device touched (see leakage).")
    out.append(
        "The membership attacks are two concrete attacks (a curious server on one upload, "
        "and a fold-in attack on the released model), not the strongest possible: an AUC "
        "near 0.5 says these attacks fail, not that every attack does. They need the "
        "simulation's data to label their guesses, so a deployment cannot run them."
    )
    out.append(
        "The sampling test checks the logged cohort sizes against Binomial(N, q); it cannot "
        "show that the sampler was secret, and it fails one honest run in "
        f"{round(1 / SAMPLING_ALPHA)}."
    )
    return out


def _empirical_status(found: Mapping[str, Any], level: str) -> str:
    if found["claimed_epsilon"] is None:
        return f"run: no {level} ε is claimed (the bound shows what the run leaks)"
    if found["passed"]:
        return "run: the lower bound does not exceed the claimed ε"
    return "run: the lower bound EXCEEDS the claimed ε: the run leaks more than it claims"


def _baseline_empirical(baseline: Path) -> dict[str, Any]:
    """The canary bounds of a baseline run (no claim: they show what it leaks)."""
    out: dict[str, Any] = {}
    if (baseline / CANARY_FILE).exists():
        found = user_level_audit(baseline)
        out["user"] = {k: found[k] for k in ("canaries", "epsilon_lower_bound", "confidence")}
    if (baseline / INTERACTION_FILE).exists():
        found = interaction_level_audit(baseline, None, None)
        out["local"] = {k: found[k] for k in ("canaries", "epsilon_lower_bound", "confidence")}
    return out


def _membership(
    run_dir: Path,
    layers: Mapping[str, Any],
    baseline: Path | None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Both attacks on the run (and on ``baseline``), each against the layer meant to
    defeat it: local DP for the curious server, user-level DP for the release."""

    def claim(name: str) -> tuple[float, float] | None:
        layer = layers.get(name) or {}
        eps, delta = layer.get("epsilon_recomputed"), layer.get("delta")
        return None if eps is None or delta is None else (float(eps), float(delta))

    if not ((run_dir / UPLOADS_FILE).exists() or (run_dir / HOLDOUT_FILE).exists()):
        return {t: {"auc": None, "tpr_at_1pct_fpr": None, "baseline": None,
                    "status": _MIA_NOT_RUN} for t in ("server", "release")}  # fmt: skip
    from pollinate.audit.membership import membership_blocks

    blocks = membership_blocks(run_dir, {"server": claim("local"), "release": claim("user")}, data)
    base = membership_blocks(baseline, {}, data) if baseline is not None else {}
    for threat, block in blocks.items():
        other = base.get(threat)
        block["baseline"] = (
            None
            if other is None or other.get("auc") is None
            else {k: other[k] for k in ("auc", "tpr_at_1pct_fpr", "roc", "status")}
        )
        block["defended_by"] = {"server": "local", "release": "user"}[threat]
        if threat == "server" and "local" not in layers and "user" in layers:
            block["note"] = (
                "user-level DP trusts the server: it sees each device's raw update, and this "
                "attack on it is not meant to fail (only local DP defends against it)"
            )
    return blocks


def build_report(
    run_dir: Path,
    *,
    opacus_cross_check: bool = True,
    baseline: Path | None = None,
    centralized: Path | None = None,
    without_canaries: Path | None = None,
    data: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The audit report of the run directory ``run_dir`` (a dict that follows the schema).

    ``opacus_cross_check`` adds Opacus's RDP ε of the user layer beside the recomputation
    (it imports torch; informational only). ``baseline`` is a run without DP made with
    the same canaries (its attack and canary figures go beside this run's),
    ``centralized`` a ``pollinate centralized`` output folder, ``without_canaries`` the
    same run made without canaries (the canaries' cost to utility). ``data`` points the
    attacks and the oracle at the run's data where ``config.json`` no longer finds it
    (``dataset``, ``columns``, ``data-dir``).

    Raises :class:`~pollinate.audit.errors.AuditError` when ``run_dir`` lacks
    ``config.json`` or ``metrics.json``.
    """
    run_dir = Path(run_dir)
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    if not isinstance(config, Mapping) or not isinstance(metrics, Mapping):
        raise AuditError(f"{run_dir}: config.json and metrics.json must be JSON objects")
    history, history_errors = _read_jsonl(run_dir / "metrics.jsonl")
    messages, message_errors = _read_jsonl(run_dir / "messages.jsonl")
    ledger_path = run_dir / "ledger.jsonl"
    raw_events, ledger_errors = _read_jsonl(ledger_path)
    events: list[_Event] = []
    for n, raw in enumerate(raw_events, start=1):
        try:
            events.append(_parse_event(raw))
        except (ValueError, TypeError) as exc:
            ledger_errors.append(f"ledger.jsonl event {n}: {exc}")
    privacy = metrics.get("privacy") or {}
    dp = str(config.get("dp") or privacy.get("dp") or "none")
    n_devices = metrics.get("devices")
    n_devices = int(n_devices) if isinstance(n_devices, int | float) else None
    rounds_completed = metrics.get("rounds_completed")
    guarantees = privacy.get("guarantees") or {}
    on = {"local": dp in ("local", "both"), "user": dp in ("user", "both")}

    layers: dict[str, Any] = {}
    checks: list[dict[str, Any]] = []
    user_party: _Party | None = None
    for name in _LAYERS:
        layer_events = [e for e in events if e.layer == name]
        if not on[name] and not layer_events:
            continue
        if name == "local":
            layer, worst, errors = _local_layer(
                layer_events,
                n_devices,
                rounds_completed,
                history,
                messages,
                guarantees.get("local") or {},
            )
        else:
            layer, worst, errors, user_party = _user_layer(
                layer_events, rounds_completed, guarantees.get("user") or {}, opacus_cross_check
            )
        layers[name] = layer
        problems = errors + ([] if layer_events else ["the ledger has no event of this layer"])
        problems += ledger_errors
        ok = not problems and math.isfinite(worst) and worst <= RECOMPUTE_TOLERANCE
        checks.append(
            _check(
                f"recomputation: {name}",
                ok,
                f"{len(layer_events)} events; worst relative difference between recorded and "
                f"recomputed ε {worst:.3g} (tolerance {RECOMPUTE_TOLERANCE:g}); recorded ε "
                f"{layer['epsilon']}, recomputed {layer['epsilon_recomputed']}"
                + (f"; problems: {problems[:5]}" if problems else ""),
            )
        )

    allow = _allow_list(messages, metrics.get("model") or config.get("model"))
    allow_ok = (
        not allow["local_names_up"]
        and not allow["mismatched_count"]
        and not allow["down_conflicts"]
        and not message_errors
        and bool(messages)
    )
    checks.append(
        _check(
            "allow-list",
            allow_ok,
            f"{allow['up_messages']} up messages; arrays sent up {allow['arrays_up']}; "
            f"local names sent up {allow['local_names_up']} (prefixes "
            f"{allow['local_prefixes']}, from {allow['local_prefixes_source']}); "
            f"{allow['mismatched_count']} arrays without a matching down array"
            + (f" {allow['mismatched'][:3]}" if allow["mismatched"] else "")
            + (f"; unreadable log lines {message_errors[:3]}" if message_errors else "")
            + ("" if messages else "; messages.jsonl is missing or empty"),
        )
    )

    noise_ok, noise_detail = _noise_source(config, privacy)
    if dp != "none":
        checks.append(_check("noise source (trust model)", noise_ok, noise_detail))

    if "user" in layers:
        assert user_party is not None
        delta = layers["user"]["delta"]
        if n_devices and delta is not None:
            bound = 1.0 / n_devices
            d_max = max(e.delta for e in user_party.events)
            checks.append(
                _check(
                    "user δ ≤ 1/N",
                    d_max <= bound,
                    f"δ = {d_max:.3g} against 1/N = {bound:.3g} (N = {n_devices} devices); "
                    f"N·δ = {d_max * n_devices:.3g}",
                )
            )
        else:
            checks.append(_check("user δ ≤ 1/N", False, "N or δ unknown"))
        train_rounds = [e.round for e in user_party.events if e.kind == "train"]
        expected = list(range(1, int(rounds_completed or 0) + 1))
        counted = Counter(train_rounds)
        dup = sorted(r for r, c in counted.items() if c > 1)
        checks.append(
            _check(
                "one user event per completed round",
                sorted(train_rounds) == expected,
                f"{len(train_rounds)} user events for {rounds_completed} completed rounds"
                + (f"; duplicated rounds {dup}" if dup else "")
                + (
                    f"; missing {sorted(set(expected) - set(train_rounds))}"
                    if set(expected) - set(train_rounds)
                    else ""
                )
                + (
                    f"; extra {sorted(set(train_rounds) - set(expected))}"
                    if set(train_rounds) - set(expected)
                    else ""
                ),
            )
        )

    published = run_dir / "release" / "privacy.json"
    if dp != "none" and layers:
        if published.exists():
            pub = _read_json(published)
            diffs = []
            for name, layer in layers.items():
                block = pub.get(name) if isinstance(pub, Mapping) else None
                key = "epsilon_max" if name == "local" else "epsilon"
                claimed = block.get(key) if isinstance(block, Mapping) else None
                fresh = layer["epsilon_recomputed"]
                if (
                    claimed is None
                    or fresh is None
                    or _relative_error(float(claimed), fresh) > (RECOMPUTE_TOLERANCE)
                ):
                    diffs.append(f"{name}: published {claimed}, recomputed {fresh}")
            checks.append(
                _check(
                    "published privacy summary matches the ledger",
                    not diffs,
                    "release/privacy.json ε per layer against the recomputation"
                    + (f": {diffs}" if diffs else ": equal"),
                )
            )
        else:
            checks.append(
                _check(
                    "published privacy summary matches the ledger",
                    False,
                    "release/privacy.json is missing",
                )
            )

    q = config.get("sample-rate")
    sampling = _sampling_test(history, n_devices, float(q) if q is not None else None)
    if sampling["p_value"] is not None:
        checks.append(
            _check(
                "cohort sizes match Poisson sampling",
                sampling["p_value"] >= SAMPLING_ALPHA,
                f"p = {sampling['p_value']:.3g} (α = {SAMPLING_ALPHA:g}) over "
                f"{sampling['rounds']} rounds; mean {sampling['observed_mean']:.4g} against "
                f"N·q = {sampling['expected_mean']:.4g}",
            )
        )

    empirical: dict[str, dict[str, Any]] = {
        name: {
            "canaries": None,
            "epsilon_lower_bound": None,
            "confidence": None,
            "claimed_epsilon": (layers.get(name) or {}).get("epsilon"),
            "passed": None,
            "status": _EMPIRICAL_NOT_RUN[name]
            if name in layers
            else f"not applicable: no {name} layer",
        }
        for name in _LAYERS
    }
    if (run_dir / CANARY_FILE).exists():
        found = user_level_audit(run_dir)
        empirical["user"] = {**found, "status": _empirical_status(found, "user")}
    if (run_dir / INTERACTION_FILE).exists():
        local = layers.get("local") or {}
        found = interaction_level_audit(
            run_dir, local.get("epsilon_recomputed"), local.get("delta")
        )
        empirical["local"] = {**found, "status": _empirical_status(found, "interaction-level")}
    baseline_empirical = _baseline_empirical(baseline) if baseline is not None else None
    for name, block in empirical.items():
        block["baseline"] = (baseline_empirical or {}).get(name)
    for name in layers:
        audit = empirical[name]
        if audit["passed"] is None:
            checks.append(_check(f"empirical audit: {name}", False, audit["status"]))
        else:
            checks.append(
                _check(
                    f"empirical audit: {name}",
                    bool(audit["passed"]),
                    f"ε lower bound {audit['epsilon_lower_bound']:.4g} at "
                    f"{audit['confidence']:.0%} confidence from {audit['canaries']} canaries, "
                    f"claimed ε {audit['claimed_epsilon']:.4g}",
                )
            )

    membership = _membership(run_dir, layers, baseline, data)
    for threat, block in membership.items():
        if block.get("under_bound") is not None:
            checks.append(
                _check(
                    f"membership attack under the trade-off curve: {threat}",
                    bool(block["under_bound"]),
                    f"AUC {block['auc']:.4f}, TPR at 1% FPR {block['tpr_at_1pct_fpr']:.4f}; "
                    f"the ROC {'stays under' if block['under_bound'] else 'CROSSES'} the "
                    f"curve that (ε = {block['claimed']['epsilon']:.4g}, δ = "
                    f"{block['claimed']['delta']:.3g}) allows",
                )
            )
    leakage = _leakage(messages, dp)

    if dp == "none":
        verdict = "not-private"
        reason = "the run uses no differential privacy (--dp none)"
    elif all(c["passed"] for c in checks):
        verdict = "pass"
        reason = "every check passed"
    else:
        verdict = "fail"
        failed = [c["name"] for c in checks if not c["passed"]]
        reason = f"failed checks: {', '.join(failed)}"

    return {
        "report_version": REPORT_VERSION,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "tool": {
            "name": "pollinate.audit.report",
            "versions": {
                lib: _version(lib) for lib in ("pollinate", "dp-accounting", "opacus", "numpy")
            },
        },
        "run": {
            "dir": str(run_dir),
            "dp": dp,
            "dataset": metrics.get("dataset") or config.get("dataset"),
            "model": metrics.get("model") or config.get("model"),
            "task": metrics.get("task") or config.get("task"),
            "devices": n_devices,
            "rounds_planned": config.get("rounds"),
            "rounds_completed": rounds_completed,
            "stopped_reason": metrics.get("stopped_reason"),
            "unreadable_lines": history_errors + message_errors + ledger_errors,
        },
        "verdict": verdict,
        "verdict_reason": reason,
        "layers": layers,
        "releases": _releases(dp, config, privacy, events, messages, run_dir),
        "empirical": empirical,
        "membership_inference": membership,
        "leakage": leakage,
        "uploads_allow_list": allow,
        "sampling_test": sampling,
        "checks": checks,
        "scope": _scope(dp, privacy),
        "trust_model": _trust_model(dp, privacy, noise_detail),
        "limitations": _limitations(dp, leakage),
        "utility": _utility(
            run_dir,
            metrics,
            {
                "baseline": baseline,
                "centralized": centralized,
                "without_canaries": without_canaries,
            },
            data,
        ),
        "sign_off": {"name": None, "role": None, "date": None, "decision": None, "notes": None},
    }


def write_report(
    run_dir: Path,
    out_dir: Path | None = None,
    data: Mapping[str, Any] | None = None,
    **references: Path | None,
) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` for ``run_dir`` into ``out_dir``
    (default ``run_dir/report``, apart from the audit-only secrets in ``run_dir/audit``);
    returns their paths."""
    from pollinate.audit.html import render_html

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(
        run_dir,
        baseline=references.get("baseline"),
        centralized=references.get("centralized"),
        without_canaries=references.get("without_canaries"),
        data=data,
    )
    json_path = out / "report.json"
    html_path = out / "report.html"
    json_path.write_text(json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n")
    html_path.write_text(render_html(report))
    return json_path, html_path
