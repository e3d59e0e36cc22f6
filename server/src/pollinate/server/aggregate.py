"""Aggregation of device updates into one pseudo-gradient.

Equal weights by default: every device's update counts once, whatever its example count,
and the mean divides by the number of updates received. Without user-level DP a run may
weight each update by its device's example count instead (``--aggregation examples``,
McMahan et al.'s FedAvg), which weights every interaction alike, as a centralized model
does, and lets heavy users count for more; under user-level DP it is refused, since it
would break the sensitivity bound (:class:`~pollinate.server.user_dp.ClippedSum`).

Updates are added to a running float64 sum one at a time (:class:`UpdateSum`), so a
round holds one dense update besides the sum, never all of them: at q = 0.2 on Amazon
Beauty (4,500 devices, 12,101 items) a list of updates would take gigabytes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = dict[str, np.ndarray]
Spec = Mapping[str, tuple[tuple[int, ...], str]]


def update_norm(update: Mapping[str, np.ndarray]) -> float:
    """L2 norm of all arrays of ``update`` taken as one vector."""
    return float(
        np.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in update.values()))
    )


class UpdateSum:
    """The equal-weight running sum of the updates added so far, over the arrays of ``spec``.

    ``spec`` maps every global array to its shape and dtype; an update must carry exactly
    those arrays (the allow-list check has made sure of that before it gets here).

    ``norms`` keeps every update's L2 norm as received, for the run log: one device whose
    update dwarfs the others' can steer the round (and an adaptive server optimizer).
    """

    def __init__(self, spec: Spec) -> None:
        self.spec = dict(spec)
        self.total = {n: np.zeros(shape, dtype=np.float64) for n, (shape, _) in spec.items()}
        self.count = 0
        self.weight = 0.0
        self.norms: list[float] = []

    def add(
        self, update: Mapping[str, np.ndarray], weight: float = 1.0, norm: float | None = None
    ) -> None:
        """Add one update, counted ``weight`` times in the mean (1: equal weights).

        ``norm``: the update's L2 norm if the caller has it (the server's sanity check
        computes it), so that a dense update is not read a second time for the log.
        """
        if not (np.isfinite(weight) and weight > 0):
            raise ValueError(f"an update's weight must be finite and positive, got {weight}")
        self.norms.append(update_norm({n: update[n] for n in self.total}) if norm is None else norm)
        self._accumulate(update, weight)

    def _accumulate(self, update: Mapping[str, np.ndarray], weight: float = 1.0) -> None:
        for n, t in self.total.items():
            t += weight * np.asarray(update[n], dtype=np.float64) if weight != 1.0 else update[n]
        self.count += 1
        self.weight += weight

    def mean(self) -> Arrays:
        """The weighted mean of the updates added, in the dtypes of ``spec``."""
        if self.count == 0:
            raise ValueError("cannot aggregate an empty list of updates")
        return {n: (t / self.weight).astype(self.spec[n][1]) for n, t in self.total.items()}
