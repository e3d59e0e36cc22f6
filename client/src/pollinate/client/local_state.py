"""Where a device keeps its private parameters and its privacy accountant between rounds.

Two stores with one interface. :class:`ContextStateStore` keeps private parameters in
Flower's node state (``context.state``), which lives as long as the node process and is
dropped when a ClientApp raises: it cannot hold an accountant, and a device refuses local
DP with it. :class:`DiskStateStore` writes to a directory the device owns, as a real
device would, so its state survives restarts and crashes.

Each saved version of the private parameters is tagged with the round that produced it.
A device loads the latest version *older than* the round it is asked to train, so a round
that is re-run after a server crash starts from exactly the state it started from.

The DP accountant is the exception: it is never rolled back. Its source of truth is the
device's own ledger (``ledger.jsonl`` in its directory): one event per release (a
training round or a noised evaluation), appended and flushed *before* the release leaves
(write-ahead), and the accountant's history ``[(noise_multiplier, sample_rate, steps),
...]`` is read back from it. A round that is re-run is accounted twice, because two
releases may have happened: ε is over-counted, never under-counted. A crash in the middle
of an append leaves a last line without its newline; that release never left the device
(the release waits for the append), so the partial line is dropped. Any other damage is
an error that names the file and line: the device cannot know what it spent.
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import ConfigRecord, Context

from pollinate.shared.errors import PollinateError
from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.privacy.ledger import LedgerEvent
from pollinate.shared.wire import arrays_to_record, record_to_arrays

Arrays = dict[str, np.ndarray]
STATE_KEY = "pollinate.local"
ROUND_KEY = "pollinate.local.round"
History = list[tuple[float, float, int]]


class StateStoreError(PollinateError):
    """A device's store cannot hold or give back what it must (not durable, corrupt)."""


class LocalStateStore(Protocol):
    #: Whether the store survives the node process (required for an accountant).
    durable: bool

    def load(self, before_round: int) -> Arrays | None:
        """The latest saved private parameters from a round < ``before_round``, or None."""

    def save(self, round_: int, params: Arrays) -> None:
        """Save the private parameters produced in ``round_``."""

    def load_history(self) -> History:
        """The DP accountant's whole history (empty for a device that never released)."""

    def charge(self, event: LedgerEvent) -> None:
        """Append one release to the device's ledger (call before the release leaves)."""


class ContextStateStore:
    """Private parameters in ``context.state`` (one version: the node's memory).

    Not durable: Flower drops context changes when the ClientApp raises, and a restarted
    node starts empty, so it keeps no accountant (:meth:`charge` raises).
    """

    durable = False

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
        return []

    def charge(self, event: LedgerEvent) -> None:
        raise StateStoreError(
            "this device keeps its state in the node's memory, which a restart or a failed "
            "round resets; a DP accountant needs a durable store (give the device a state "
            "directory)"
        )


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
    def ledger_path(self) -> Path:
        return self.dir / "ledger.jsonl"

    def events(self) -> list[LedgerEvent]:
        """Every release this device ever made, from its own ledger (see the module doc)."""
        legacy = self.dir / "dp-history.json"
        if legacy.exists():
            raise StateStoreError(
                f"{legacy} holds an accountant in an older format; this version keeps it in "
                f"{self.ledger_path.name}. Finish the run with the Pollinate that wrote it"
            )
        if not self.ledger_path.exists():
            return []
        self._drop_partial()
        text = self.ledger_path.read_bytes().decode("utf-8", errors="replace")
        committed = text.split("\n")[:-1]
        events = []
        for n, line in enumerate(committed, start=1):
            if not line.strip():
                continue
            try:
                events.append(LedgerEvent.from_mapping(json.loads(line)))
            except (ValueError, TypeError, PollinateError) as exc:
                raise StateStoreError(
                    f"{self.ledger_path}, line {n}: not a ledger event ({exc}); the device "
                    "cannot know what it already spent. Restore the file from a backup; "
                    "never delete it to start over"
                ) from exc
        return events

    def _drop_partial(self) -> None:
        """Cut a last line that lacks its newline: an append a crash cut short, whose
        release never left the device. Reads only the file's tail."""
        if not self.ledger_path.exists():
            return
        with self.ledger_path.open("r+b") as fh:
            size = fh.seek(0, 2)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            end = size  # find the last newline, reading backwards in blocks
            while end > 0:
                start = max(0, end - 4096)
                fh.seek(start)
                cut = fh.read(end - start).rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            fh.truncate(end)
            if self.durable:
                os.fsync(fh.fileno())

    def load_history(self) -> History:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.events()]

    def charge(self, event: LedgerEvent) -> None:
        # The caller read (and so checked) the ledger with load_history this round; only a
        # partial last line, left by a crash since, must go before the append.
        self._drop_partial()
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.ledger_path.open("a") as fh:
            fh.write(event.to_json() + "\n")
            fh.flush()
            if self.durable:
                os.fsync(fh.fileno())
