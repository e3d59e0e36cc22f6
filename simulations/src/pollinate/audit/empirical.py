"""The empirical audit of the user-level guarantee: score the run's canary devices.

A run made with ``--audit-canaries M`` holds, in its audit-only files, the secret coins
and directions of M canary devices and the model it started from
(:mod:`pollinate.server.canaries`). Each canary is scored by how far the released model
moved along its direction; an auditor who knows nothing but the released model and the
canaries' directions guesses "included" for the highest scores and "excluded" for the
lowest, over a grid fixed in advance (:func:`pollinate.audit.one_run.default_guess_grid`),
and the guesses give a lower bound on ε at 95% confidence
(:func:`pollinate.audit.one_run.audit_canaries`). The audit passes when that bound does
not exceed the ε the ledger claims. It can fail: a run whose noise was weaker than its
ledger says, or a run without DP, lets the guesses be right too often.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.audit.one_run import audit_canaries
from pollinate.server.canaries import UserCanaries, load_initial
from pollinate.shared.privacy.interaction_canaries import InteractionCanaries
from pollinate.shared.privacy.ledger import read_ledger, recompute

#: δ of the bound when the run claims none (a run without user-level DP).
DEFAULT_DELTA = 1e-5


def claimed_user_privacy(run_dir: Path) -> tuple[float, float]:
    """The user-level (ε, δ) the run's ledger claims, recomputed; (∞, 1e-5) without one."""
    path = run_dir / "ledger.jsonl"
    events = [e for e in read_ledger(path) if e.layer == "user"] if path.exists() else []
    if not events:
        return math.inf, DEFAULT_DELTA
    epsilon = recompute(events).user
    return (math.inf if epsilon is None else float(epsilon)), float(events[-1].delta)


def user_level_audit(run_dir: Path, *, beta: float = 0.05) -> dict[str, Any]:
    """The ``empirical.user`` block of the audit report for ``run_dir``."""
    canaries = UserCanaries.load(run_dir)
    initial = load_initial(run_dir)
    with np.load(run_dir / "global_params.npz") as saved:
        released = {k: saved[k] for k in saved.files}
    moved = {n: released[n].astype(np.float64) - initial[n].astype(np.float64) for n in initial}
    scores = canaries.scores(moved)
    included = np.asarray(canaries.included, dtype=bool)
    claimed, delta = claimed_user_privacy(run_dir)
    result = audit_canaries(scores, included, delta=delta, beta=beta)
    best = result.best
    return {
        "canaries": canaries.m,
        "included": int(included.sum()),
        "epsilon_lower_bound": float(result.epsilon_lower_bound),
        "confidence": float(result.confidence),
        "delta": delta,
        "claimed_epsilon": None if math.isinf(claimed) else claimed,
        "passed": bool(result.epsilon_lower_bound <= claimed),
        "guesses": asdict(best),
        "method": "one-run audit (Steinke, Nasr and Jagielski 2023) with random-direction "
        "canary devices (Andrew et al. 2024), scored by the released model's movement along "
        "each canary's direction; Bonferroni over a pre-registered guess grid",
    }


def interaction_level_audit(
    run_dir: Path, claimed: float | None, delta: float | None, *, beta: float = 0.05
) -> dict[str, Any]:
    """The ``empirical.local`` block: the run's interaction canaries, scored by how far
    each canary item moved in the released model (see
    :mod:`pollinate.shared.privacy.interaction_canaries`), against ``claimed`` (the
    largest ε of any device, at ``delta``; None for a run without local DP)."""
    canaries = InteractionCanaries.load(run_dir)
    initial = load_initial(run_dir)
    with np.load(run_dir / "global_params.npz") as saved:
        released = {k: saved[k] for k in saved.files}
    scores = canaries.scores(released, initial)
    hosts, included = canaries.plan()
    d = DEFAULT_DELTA if delta is None else float(delta)
    result = audit_canaries(scores, included, delta=d, beta=beta)
    return {
        "canaries": canaries.m,
        "included": int(included.sum()),
        "host_devices": len(set(hosts.tolist())),
        "epsilon_lower_bound": float(result.epsilon_lower_bound),
        "confidence": float(result.confidence),
        "delta": d,
        "claimed_epsilon": claimed,
        # Without a claim nothing is contradicted (as at the user level).
        "passed": bool(claimed is None or result.epsilon_lower_bound <= claimed),
        "guesses": asdict(result.best),
        "method": "one-run audit (Steinke, Nasr and Jagielski 2023) with replace-one canary "
        "interactions: each canary row names its own canary item or a shared sink by a secret "
        "coin; scored by the released model's movement of the canary item (its bias, or its "
        "embedding's norm); Bonferroni over a pre-registered guess grid; claimed ε is the "
        "largest of any device",
    }
