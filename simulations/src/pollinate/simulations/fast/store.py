"""Where a shard's devices keep their state: private parameters in the shard's memory, the
DP accountant in each device's own ledger file.

A :class:`ShardStore` implements the device's state-store interface
(:class:`~pollinate.client.local_state.LocalStateStore`) for the fast engine. Private
parameters are versioned by round as on disk (a round loads the latest version older than
itself) but stay in memory: a simulated device's "disk" is only needed to survive a
restart, and the fast engine does not resume. The accountant is the device's own ledger,
as on Flower (:class:`~pollinate.client.local_state.DiskStateStore`): every release is
appended to ``ledger.jsonl`` in the device's folder *before* the shard's sum leaves, and
the history is read from it once and then kept in memory (only this shard writes it).
Each charged event is also collected, so that the driver can copy it into the run's
ledger before it uses the shard's sum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pollinate.client.local_state import DiskStateStore, History, StateStoreError
from pollinate.shared.privacy.ledger import LedgerEvent

Arrays = dict[str, np.ndarray]


class ShardStore:
    """A device's private parameters in memory (two versions) and its ledger on disk."""

    durable = True  # the accountant (the ledger) is on disk; see the module docstring

    def __init__(self, root: Path | None, device: str, events: list[LedgerEvent]) -> None:
        self.disk = DiskStateStore(root, device, durable=False) if root is not None else None
        self.versions: dict[int, Arrays] = {}
        self.history: History | None = None
        self.events = events

    def load(self, before_round: int) -> Arrays | None:
        older = [r for r in self.versions if r < before_round]
        return self.versions[max(older)] if older else None

    def save(self, round_: int, params: Arrays) -> None:
        self.versions[round_] = params
        for old in sorted(self.versions)[:-2]:
            del self.versions[old]

    def latest(self) -> tuple[int, Arrays] | None:
        """The last saved version, for writing the shard's state out at the end of a run."""
        if not self.versions:
            return None
        r = max(self.versions)
        return r, self.versions[r]

    def load_history(self) -> History:
        if self.history is None:
            self.history = self.disk.load_history() if self.disk is not None else []
        return list(self.history)

    def charge(self, event: LedgerEvent) -> None:
        if self.disk is None:
            raise StateStoreError(
                "this simulated device has no state folder for its ledger; a DP accountant "
                "needs one (--device-state-dir)"
            )
        history = self.load_history()  # read before the append: the file is the truth
        self.disk.charge(event)
        self.history = [*history, (event.noise_multiplier, event.sample_rate, event.steps)]
        self.events.append(event)
