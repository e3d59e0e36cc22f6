"""Utility beside privacy in the audit report: by user activity segment, and references.

DP costs light users most (their few interactions carry little signal over the noise), so
the report splits the run's test figures into light, median and heavy users: the thirds
of the run's devices by number of training rows. The figures come from the simulation
oracle (:mod:`pollinate.simulations.oracle`): the experimenter scores the released model
on every device's held-out rows. References are other runs given to ``pollinate audit``:
a non-private federated baseline, a centralized reference, the same run without canaries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

SEGMENTS = ("light", "median", "heavy")


def segment_utility(run_dir: Path, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Test figures per activity third, with their boundaries and device counts."""
    from pollinate.server.evaluation import add_sums, finalize
    from pollinate.shared.errors import PollinateError
    from pollinate.simulations.oracle import oracle_device_parts

    try:
        cfg, parts = oracle_device_parts(run_dir, "test", data=data)
    except (PollinateError, OSError, ValueError, KeyError) as exc:
        return {"segments": None, "status": f"not computed: {exc}"}
    activity = np.array([n for n, _ in parts], np.float64)
    if len(activity) < 3:
        return {"segments": None, "status": "not computed: fewer than 3 devices"}
    low, high = np.quantile(activity, [1 / 3, 2 / 3])
    groups = {
        "light": activity <= low,
        "median": (activity > low) & (activity <= high),
        "heavy": activity > high,
    }
    out: dict[str, Any] = {}
    for name in SEGMENTS:
        chosen = [p for (_, p), keep in zip(parts, groups[name], strict=True) if keep]
        rows = activity[groups[name]]
        out[name] = {
            "devices": len(chosen),
            "training_rows": {
                "min": int(rows.min()) if len(rows) else None,
                "max": int(rows.max()) if len(rows) else None,
            },
            "metrics": finalize(cfg.task, add_sums(chosen)) if chosen else {},
        }
    return {
        "segments": out,
        "status": "computed: thirds of the run's devices by training rows, scored by the "
        "simulation oracle on their test rows",
    }


def reference_figures(run_dir: Path) -> dict[str, Any]:
    """The final test figures of another run (or centralized reference) folder."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"dir": str(run_dir), "final": None, "status": f"unreadable: {exc}"}
    final = metrics.get("final") or metrics.get("test") or {}
    privacy = metrics.get("privacy") or {}
    return {
        "dir": str(run_dir),
        "final": final,
        "dp": privacy.get("dp") or metrics.get("dp"),
        "status": "read from metrics.json",
    }
