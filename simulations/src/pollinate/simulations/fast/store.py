"""Where a shard's devices keep their state: private parameters in the shard's memory, the
DP accountant in each device's own ledger file.

A :class:`ShardStore` implements the device's state-store interface
(:class:`~pollinate.client.local_state.LocalStateStore`) for the fast engine. Private
parameters are versioned by round as on disk (a round loads the latest version older than
itself) but stay in memory; what a restart needs of them is written once a round, for
every device together, as one snapshot file (:func:`write_snapshot`, read back by
:func:`read_snapshot` when a run resumes). The accountant is the device's own ledger,
as on Flower (:class:`~pollinate.client.local_state.DiskStateStore`): every release is
appended to ``ledger.jsonl`` in the device's folder *before* the shard's sum leaves, and
the history is read from it once and then kept in memory (only this shard writes it).
Each charged event is also collected, so that the driver can copy it into the run's
ledger before it uses the shard's sum.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

from pollinate.client.local_state import DiskStateStore, History, StateStoreError
from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.privacy.ledger import LedgerEvent

Arrays = dict[str, np.ndarray]

#: The devices' private parameters at the last checkpoint, under ``device-state-dir``.
SNAPSHOT_NAME = "fast-engine-states.npz"
_PARAM = "param/"


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


def pack_versions(stores: Iterable[tuple[int, ShardStore]]) -> Arrays:
    """Every kept version of every device's private parameters as a few arrays: one entry
    per (device, round) in ``partition`` and ``round``, each parameter stacked in that
    order under ``param/NAME`` (a file of thousands of small arrays is slow to write)."""
    parts: list[int] = []
    rounds: list[int] = []
    stacks: dict[str, list[np.ndarray]] = {}
    for partition, store in stores:
        for round_, arrays in sorted(store.versions.items()):
            parts.append(partition)
            rounds.append(round_)
            for name, value in arrays.items():
                stacks.setdefault(name, []).append(value)
    if any(len(v) != len(parts) for v in stacks.values()):
        raise StateStoreError("the devices keep different private parameters; cannot pack them")
    out = {"partition": np.asarray(parts, np.int64), "round": np.asarray(rounds, np.int64)}
    out.update({_PARAM + n: np.stack(v) for n, v in stacks.items()})
    return out


def concat_packs(packs: Iterable[Arrays]) -> Arrays:
    """The packs of several shards as one (see :func:`pack_versions`)."""
    packs = [p for p in packs if len(p["partition"])]
    if not packs:
        return pack_versions([])
    keys = set(packs[0])
    if any(set(p) != keys for p in packs):
        raise StateStoreError("the shards keep different private parameters; cannot pack them")
    return {k: np.concatenate([p[k] for p in packs]) for k in keys}


def deal_versions(
    pack: Mapping[str, np.ndarray], owner: Mapping[int, int], shards: int, through_round: int
) -> list[Arrays]:
    """``pack`` cut into one pack per shard (``owner``: device → shard), keeping only the
    versions up to ``through_round``: later ones belong to rounds that will be run again."""
    keep = np.flatnonzero(pack["round"] <= through_round)
    owners = np.array([owner[int(p)] for p in pack["partition"][keep]], dtype=np.int64)
    return [{k: v[keep[owners == i]] for k, v in pack.items()} for i in range(shards)]


def unpack_versions(
    pack: Mapping[str, np.ndarray], index: np.ndarray
) -> list[tuple[int, int, Arrays]]:
    """``(partition, round, private parameters)`` of the entries ``index`` of ``pack``."""
    names = [k for k in pack if k.startswith(_PARAM)]
    return [
        (int(pack["partition"][i]), int(pack["round"][i]),
         {k[len(_PARAM):]: np.array(pack[k][i]) for k in names})
        for i in index
    ]  # fmt: skip


def write_snapshot(path: Path, round_: int, n_devices: int, pack: Arrays) -> None:
    """Write the devices' packed private parameters after ``round_``, atomically."""
    meta = {"round": round_, "devices": n_devices}
    buf = io.BytesIO()
    arrays = dict(pack, meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8))
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buf.getvalue(), durable=False)


def read_snapshot(path: Path, n_devices: int) -> tuple[int, Arrays]:
    """The round and the pack of a snapshot, checked for consistency (no integrity
    protection: it is a simulated device's disk): a missing or unreadable file, or one
    that does not fit this run (device count, rounds, entry counts, non-finite values),
    raises :class:`~pollinate.client.local_state.StateStoreError` saying what."""
    if not path.is_file():
        raise StateStoreError(
            f"{path} does not exist: the devices' private parameters of this run were not "
            "saved (was it checkpointed by the fast engine, with this --device-state-dir?)"
        )
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            pack = {k: z[k] for k in z.files if k != "meta"}
        round_, devices = int(meta["round"]), int(meta["devices"])
        parts, rounds = pack["partition"], pack["round"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StateStoreError(f"{path} is unreadable ({exc}); start the run again") from exc
    n = len(parts)
    bad = (
        devices != n_devices
        or parts.dtype.kind != "i"
        or rounds.dtype.kind != "i"
        or rounds.shape != (n,)
        or any(not k.startswith(_PARAM) or len(v) != n for k, v in pack.items()
               if k not in ("partition", "round"))
        or (n and (parts.min() < 0 or parts.max() >= n_devices or rounds.min() < 1
                   or rounds.max() > round_))
        or any(v.dtype.kind == "f" and not np.isfinite(v).all() for v in pack.values())
    )  # fmt: skip
    if bad:
        raise StateStoreError(
            f"{path} does not describe {n_devices} devices' private parameters up to round "
            f"{round_} (damaged, or written by another run); start the run again"
        )
    return round_, pack
