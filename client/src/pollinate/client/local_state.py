"""Where a device keeps its private parameters between rounds.

Two stores with one interface. :class:`ContextStateStore` keeps them in Flower's node
state (``context.state``), which lives as long as the node process. :class:`DiskStateStore`
writes them to a directory, as a real device would, so they survive restarts.

Each saved version is tagged with the round that produced it. A device loads the latest
version *older than* the round it is asked to train, so a round that is re-run after a
server crash starts from exactly the state it started from the first time.

The DP accountant's history is the exception: it is never rolled back. It is one list
``[(noise_multiplier, sample_rate, steps), ...]`` of every round the device ever trained
under DP, saved *before* the update leaves (write-ahead). A round that is re-run is
accounted twice, because two releases happened: ε is over-counted, never under-counted.
"""

from __future__ import annotations

import io
import json
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
HISTORY_KEY = "pollinate.dp-history"
History = list[tuple[float, float, int]]


def _flatten(history: History) -> list[float]:
    return [float(x) for entry in history for x in entry]


def _unflatten(flat: list[float]) -> History:
    if len(flat) % 3:
        raise ValueError(f"a DP history has 3 numbers per round, got {len(flat)} numbers")
    return [(flat[i], flat[i + 1], int(flat[i + 2])) for i in range(0, len(flat), 3)]


class LocalStateStore(Protocol):
    def load(self, before_round: int) -> Arrays | None:
        """The latest saved private parameters from a round < ``before_round``, or None."""

    def save(self, round_: int, params: Arrays) -> None:
        """Save the private parameters produced in ``round_``."""

    def load_history(self) -> History:
        """The DP accountant's whole history (empty for a device that never trained)."""

    def save_history(self, history: History) -> None:
        """Persist the accountant's history (call before the update leaves)."""


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

    def load_history(self) -> History:
        record = self.state.config_records.get(HISTORY_KEY)
        if record is None:
            return []
        return _unflatten(list(record["flat"]))  # type: ignore[arg-type]

    def save_history(self, history: History) -> None:
        self.state[HISTORY_KEY] = ConfigRecord({"flat": _flatten(history)})


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

    @property
    def _history_path(self) -> Path:
        return self.dir / "dp-history.json"

    def load_history(self) -> History:
        if not self._history_path.exists():
            return []
        try:
            raw = json.loads(self._history_path.read_text())
            return [(float(z), float(q), int(k)) for z, q, k in raw]
        except (ValueError, TypeError) as exc:
            raise ValueError(
                f"{self._history_path} is corrupt ({exc}); the device cannot know what it "
                "already spent. Restore it from a backup; never delete it to start over"
            ) from exc

    def save_history(self, history: History) -> None:
        data = json.dumps([[z, q, k] for z, q, k in history]).encode()
        atomic_write_bytes(self._history_path, data, durable=self.durable)
