"""Aggregation of device updates into one pseudo-gradient.

Equal weights: every device's update counts once, whatever its example count. An
example-weighted mean would let one heavy user dominate and, under user-level DP, break
the sensitivity bound. Without DP the mean divides by the number of updates received.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


def mean_update(
    updates: Sequence[Mapping[str, np.ndarray]], spec_names: Sequence[str]
) -> dict[str, np.ndarray]:
    """Equal-weight mean of ``updates`` (non-empty) over the parameters in ``spec_names``."""
    if not updates:
        raise ValueError("cannot aggregate an empty list of updates")
    total = {n: np.zeros_like(updates[0][n], dtype=np.float64) for n in spec_names}
    for upd in updates:
        for n in spec_names:
            total[n] += upd[n]
    return {n: (t / len(updates)).astype(updates[0][n].dtype) for n, t in total.items()}
