"""Interaction-level canaries for the empirical audit of local DP (``--audit-canaries M``).

The audit of the interaction-level guarantee follows Steinke, Nasr and Jagielski
(NeurIPS 2023, "Privacy auditing with one (1) training run"): M canaries, each decided
by a secret coin, are put into one run, and an auditor who sees what the guarantee
protects against guesses the coins. Local DP here is *replace-one* (a device's
interaction count is public), so a canary is a pair of neighbouring rows, not a row that
is there or not:

- the run's catalogue gets M canary items and one sink item, which no real device has;
- canary ``k`` lives on one device ``users[k]`` (chosen with the secret key) as one
  training row with the highest rating (a positive, for implicit data);
- its coin says which item that row names: canary item ``k`` (included) or the sink
  (excluded). Either way the device holds the same number of rows.

Canary item ``k``'s row of the released model moves only through that one row (and the
noise): the auditor scores each canary by how far its item's bias (or, for a model
without item biases, its embedding) moved from the initial model. A mechanism that is
ε-DP for one replaced interaction cannot let the guesses be right much more often than
e^ε/(1 + e^ε).

The key, and so the coins and the hosts, live in an audit-only file (:data:`FILE`) under
the run directory, never under ``release/``. A simulation's engine gives it to its
virtual devices through their node config, as their owner would; the server never sees
it. The canaries add M + 1 rarely touched items and one row to some devices: measure the
cost against a run without them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollinate.shared.errors import ConfigError, PollinateError
from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.privacy.randomness import seeded_generator

#: Audit-only file under the run directory (never under ``release/``).
FILE = "audit/interaction_canaries.json"
#: Node-config key under which a simulated device finds the file.
NODE_CONFIG_KEY = "pollinate-audit-interaction-canaries"
#: Item ids of the canary items (``PREFIX + k``) and of the sink.
PREFIX = "__pollinate_canary_"
SINK = "__pollinate_canary_sink"
_PLAN_STREAM = 11


class InteractionCanaryError(PollinateError):
    """The interaction canaries of a run are missing or do not fit it."""


@dataclass(frozen=True)
class InteractionCanaries:
    """M canary rows on devices, decided by a secret key.

    ``n_items`` is the real catalogue's size: canary item ``k`` has index ``n_items + k``
    and the sink ``n_items + m``.
    """

    key: int
    m: int
    n_users: int
    n_items: int

    @classmethod
    def create(
        cls, m: int, n_users: int, n_items: int, key: int | None = None
    ) -> InteractionCanaries:
        """``m`` canaries over ``n_users`` devices; a fresh secret key unless ``key``."""
        if m < 1:
            raise ConfigError(f"the number of canaries must be positive, got {m}")
        if n_users < 1 or n_items < 1:
            raise ConfigError(f"canaries need devices and items, got {n_users} and {n_items}")
        return cls(key=secrets.randbits(127) if key is None else int(key), m=int(m),
                   n_users=int(n_users), n_items=int(n_items))  # fmt: skip

    @property
    def extra_items(self) -> int:
        """Items the canaries add to the catalogue: one per canary and the sink."""
        return self.m + 1

    @property
    def sink(self) -> int:
        return self.n_items + self.m

    def plan(self) -> tuple[np.ndarray, np.ndarray]:
        """``(hosts, included)``: the device of each canary and its secret coin."""
        rng = seeded_generator(self.key, _PLAN_STREAM)
        hosts = rng.integers(0, self.n_users, size=self.m)
        included = rng.random(self.m) < 0.5
        return hosts.astype(np.int64), included

    def rows_of(self, user: int) -> list[int]:
        """The item index of each canary row that device ``user`` holds."""
        hosts, included = self.plan()
        return [
            self.n_items + int(k) if included[k] else self.sink
            for k in np.flatnonzero(hosts == user)
        ]

    def item_ids(self) -> list[str]:
        return [f"{PREFIX}{k}" for k in range(self.m)] + [SINK]

    # -- scoring -------------------------------------------------------------------
    def scores(
        self, released: Mapping[str, np.ndarray], initial: Mapping[str, np.ndarray]
    ) -> np.ndarray:
        """How far each canary item moved from the initial model, in the direction that
        its row (the highest rating, or a positive) pushes it: its bias's increase, or,
        for a model without item biases, the norm of its embedding's change."""
        rows = slice(self.n_items, self.n_items + self.m)
        bias = [n for n in ("item_bias.weight", "item_bias") if n in released]
        name = bias[0] if bias else _item_table(released, self.total_items)
        moved = (
            np.asarray(released[name], np.float64)[rows]
            - np.asarray(initial[name], np.float64)[rows]
        )
        moved = moved.reshape(self.m, -1)
        if bias:
            return moved[:, 0]
        return np.sqrt(np.sum(moved * moved, axis=1))

    @property
    def total_items(self) -> int:
        return self.n_items + self.extra_items

    # -- the audit-only file -------------------------------------------------------
    def save(self, run_dir: Path) -> Path:
        path = Path(run_dir) / FILE
        record = {
            "warning": "AUDIT ONLY: whoever holds this file can tell which canaries took "
            "part; never publish it",
            "key": str(self.key),
            "m": self.m,
            "n_users": self.n_users,
            "n_items": self.n_items,
        }
        atomic_write_bytes(path, json.dumps(record).encode())
        return path

    @classmethod
    def load(cls, path: Path) -> InteractionCanaries:
        path = Path(path)
        if path.is_dir():
            path = path / FILE
        if not path.exists():
            raise InteractionCanaryError(
                f"{path} does not exist: the run was made without interaction canaries "
                "(--audit-canaries with --dp local, both or none)"
            )
        try:
            raw = json.loads(path.read_text())
            return cls.create(int(raw["m"]), int(raw["n_users"]), int(raw["n_items"]),
                              key=int(raw["key"]))  # fmt: skip
        except (ValueError, KeyError, TypeError, ConfigError) as exc:
            raise InteractionCanaryError(f"{path} is not a canary file ({exc})") from exc


def _item_table(arrays: Mapping[str, np.ndarray], n_items: int) -> str:
    for name, value in arrays.items():
        if "item" in name and value.ndim >= 1 and value.shape[0] == n_items:
            return name
    raise InteractionCanaryError(
        f"the model has no item table of {n_items} rows to score the canaries on "
        f"(arrays: {sorted(arrays)})"
    )


def canary_rating(rating_scale: tuple[float, float] | None) -> float:
    """The rating of a canary row: the scale's top (1 for implicit data)."""
    return 1.0 if rating_scale is None else float(rating_scale[1])


def expected_canaries(m: int, dp: str) -> tuple[int, int]:
    """``(interaction, user)`` canary counts that ``--audit-canaries m`` gives under ``dp``:
    interaction canaries audit the local layer, canary devices the user layer; a run
    without DP gets both (the audit shows what it leaks)."""
    local = m if dp in ("local", "both", "none") else 0
    user = m if dp in ("user", "both", "none") else 0
    return local, user
