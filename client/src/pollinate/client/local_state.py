"""Where a device keeps its private parameters between rounds.

Two stores with one interface. :class:`ContextStateStore` keeps them in Flower's node
state (``context.state``), which lives as long as the node process. :class:`DiskStateStore`
writes them to a directory, as a real device would, so they survive restarts.

Each saved version is tagged with the round that produced it. A device loads the latest
version *older than* the round it is asked to train, so a round that is re-run after a
server crash starts from exactly the state it started from the first time.
"""

from __future__ import annotations

import io
import re
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import ConfigRecord, Context

from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.wire import arrays_to_record, record_to_arrays

Arrays = dict[str, np.ndarray]
STATE_KEY = "pollinate.local"
ROUND_KEY = "pollinate.local.round"


class LocalStateStore(Protocol):
    def load(self, before_round: int) -> Arrays | None:
        """The latest saved private parameters from a round < ``before_round``, or None."""

    def save(self, round_: int, params: Arrays) -> None:
        """Save the private parameters produced in ``round_``."""


class ContextStateStore:
    """Private parameters in ``context.state`` (one version: the node's memory)."""

    def __init__(self, context: Context) -> None:
        self.state = context.state

    def load(self, before_round: int) -> Arrays | None:
        if STATE_KEY not in self.state.array_records:
            return None
        saved_round = int(self.state.config_records[ROUND_KEY]["round"])  # type: ignore[arg-type]
        if saved_round >= before_round:
            return None
        return record_to_arrays(self.state.array_records[STATE_KEY])

    def save(self, round_: int, params: Arrays) -> None:
        self.state[STATE_KEY] = arrays_to_record(params)
        self.state[ROUND_KEY] = ConfigRecord({"round": round_})


_VERSION = re.compile(r"^r(\d+)\.npz$")


class DiskStateStore:
    """Private parameters on disk under ``root/<device>/r<round>.npz`` (atomic writes)."""

    def __init__(self, root: Path, device: str, keep: int = 2, *, durable: bool = True) -> None:
        self.dir = Path(root) / device
        self.keep = keep
        self.durable = durable

    def _versions(self) -> list[int]:
        if not self.dir.is_dir():
            return []
        found = (_VERSION.match(p.name) for p in self.dir.iterdir())
        return sorted(int(m.group(1)) for m in found if m)

    def load(self, before_round: int) -> Arrays | None:
        older = [r for r in self._versions() if r < before_round]
        if not older:
            return None
        with np.load(self.dir / f"r{older[-1]}.npz") as z:
            return {k: z[k] for k in z.files}

    def save(self, round_: int, params: Arrays) -> None:
        buf = io.BytesIO()
        np.savez(buf, **params)  # type: ignore[arg-type]
        atomic_write_bytes(self.dir / f"r{round_}.npz", buf.getvalue(), durable=self.durable)
        for old in self._versions()[: -self.keep]:
            (self.dir / f"r{old}.npz").unlink(missing_ok=True)
