"""What a simulation keeps for the membership-inference attacks of ``pollinate audit``.

Two attacks, one per threat model (see :mod:`pollinate.audit.membership`), need material
that the run itself must keep, in audit-only files under ``RUN/audit/`` (never under
``release/``):

- **the curious server** sees each device's decoded upload. :class:`UploadProbe` keeps,
  for the first upload of each device (up to a cap), what the server saw of every item:
  the norm of that item's rows in the update (Yuan et al., WWW 2023: the items a device
  touched stand out). It is the server's own view, kept so that an auditor can measure
  what it reveals;
- **anyone holding the released model** tries to tell users who took part from users who
  did not. :class:`Holdout` keeps a secret random share of the simulated users out of the
  run (never sampled, never evaluated): the non-members the attack is tested on.

Both are simulation-only: the auditor needs every device's data to label the attack's
guesses.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollinate.shared.errors import ConfigError, PollinateError
from pollinate.shared.fileio import atomic_write_bytes

UPLOADS_FILE = "audit/uploads.npz"
HOLDOUT_FILE = "audit/holdout.json"
#: Devices whose first upload the probe keeps (bounds the file: cap × items floats).
DEFAULT_CAP = 2000


class AuditMaterialError(PollinateError):
    """The audit material of a run is missing or unreadable."""


def item_row_norms(update: Mapping[str, np.ndarray], n_items: int) -> np.ndarray:
    """The L2 norm of each item's rows across every item-indexed array of ``update``.

    An item-indexed array is one whose first axis has ``n_items`` entries and whose name
    says item (``item_factors``, ``item_bias``, ...).
    """
    total = np.zeros(n_items, np.float64)
    found = False
    for name, value in update.items():
        if "item" in name and value.ndim >= 1 and value.shape[0] == n_items:
            flat = np.asarray(value, np.float64).reshape(n_items, -1)
            total += np.sum(flat * flat, axis=1)
            found = True
    if not found:
        raise AuditMaterialError(
            f"the update has no item-indexed array of {n_items} rows (arrays: {sorted(update)})"
        )
    return np.sqrt(total)


class UploadProbe:
    """The first decoded upload of each device, reduced to per-item row norms."""

    def __init__(self, n_items: int, cap: int = DEFAULT_CAP) -> None:
        self.n_items = n_items
        self.cap = cap
        self.keys: list[int] = []
        self.rounds: list[int] = []
        self.rows: list[np.ndarray] = []
        self._seen: set[int] = set()
        self._saved = -1

    def record(self, round_: int, device_key: int, update: Mapping[str, np.ndarray]) -> None:
        if len(self.keys) >= self.cap or device_key in self._seen:
            return
        self._seen.add(int(device_key))
        self.keys.append(int(device_key))
        self.rounds.append(int(round_))
        self.rows.append(item_row_norms(update, self.n_items).astype(np.float32))

    def save(self, run_dir: Path) -> None:
        if self._saved == len(self.keys):
            return
        self._saved = len(self.keys)
        path = Path(run_dir) / UPLOADS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        rows = np.stack(self.rows) if self.rows else np.zeros((0, self.n_items), np.float32)
        np.savez(
            path,
            device_keys=np.asarray(self.keys, np.int64),
            rounds=np.asarray(self.rounds, np.int64),
            item_row_norms=rows,
        )

    def load_existing(self, run_dir: Path) -> None:
        """Continue a resumed run's probe (the devices already seen stay seen)."""
        path = Path(run_dir) / UPLOADS_FILE
        if not path.exists():
            return
        keys, rounds, rows = load_uploads(run_dir)
        self.keys, self.rounds, self.rows = list(map(int, keys)), list(map(int, rounds)), list(rows)
        self._seen = set(self.keys)
        self._saved = len(self.keys)


def load_uploads(run_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(device_keys, rounds, item_row_norms)`` kept by a run's :class:`UploadProbe`."""
    path = Path(run_dir) / UPLOADS_FILE
    if not path.exists():
        raise AuditMaterialError(
            f"{path} does not exist: the run kept no uploads (make it with --audit-canaries)"
        )
    with np.load(path) as saved:
        return saved["device_keys"], saved["rounds"], saved["item_row_norms"]


@dataclass(frozen=True)
class Holdout:
    """Simulated users kept out of the run, by a secret coin each."""

    fraction: float
    users: frozenset[int]

    @classmethod
    def draw(cls, fraction: float, n_users: int, coins: np.random.Generator) -> Holdout:
        if not 0 < fraction < 1:
            raise ConfigError(f"the held-out share must be in (0, 1), got {fraction}")
        out = np.flatnonzero(coins.random(n_users) < fraction)
        if len(out) == 0 or len(out) == n_users:
            raise ConfigError(
                f"--audit-holdout {fraction} over {n_users} devices holds out {len(out)}: "
                "the attack needs members and non-members; change the share"
            )
        return cls(float(fraction), frozenset(int(u) for u in out))

    def save(self, run_dir: Path) -> None:
        record = {
            "warning": "AUDIT ONLY: the users kept out of the run",
            "fraction": self.fraction,
            "users": sorted(self.users),
        }
        atomic_write_bytes(Path(run_dir) / HOLDOUT_FILE, json.dumps(record).encode())

    @classmethod
    def load(cls, run_dir: Path) -> Holdout | None:
        path = Path(run_dir) / HOLDOUT_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
            return cls(float(raw["fraction"]), frozenset(int(u) for u in raw["users"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise AuditMaterialError(f"{path} is not a holdout file ({exc})") from exc
