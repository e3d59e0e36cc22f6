"""User-level canaries for the empirical privacy audit (``--audit-canaries M``).

The audit tries to break the user-level guarantee with one training run (Steinke, Nasr
and Jagielski, NeurIPS 2023), using canary *devices* whose update is a random direction
(Andrew et al., ICLR 2024, "One-shot empirical privacy estimation for federated
learning"). Each of the M canaries is included in the run with probability 1/2, by a
secret coin; an included canary takes part in every round with the same Poisson rate q as
a real device and contributes its direction scaled to the clip norm S, exactly what the
sensitivity bound allows one user. After the run, the auditor scores every canary by how
far the released model moved along its direction and guesses which were included
(:mod:`pollinate.audit.one_run`). A mechanism that is (ε, δ)-DP for one user cannot let
those guesses be right much more often than e^ε/(1 + e^ε).

Random directions in a space of tens of thousands of coordinates are nearly orthogonal
to each other and to the real devices' updates, so a canary's score is its own
contribution plus noise. The canaries are fake devices: they change the model a little
(measure the cost against a run without them), and they are never part of what is
released. Their coins and the key of their directions live in an audit-only file
(:data:`CANARY_FILE`) with the model the run started from; ``release/`` never holds them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pollinate.server.aggregate import Spec, UpdateSum
from pollinate.shared.errors import ConfigError, PollinateError
from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.privacy.randomness import seeded_generator

Arrays = dict[str, np.ndarray]

#: Audit-only files, under the run directory (never under ``release/``).
CANARY_FILE = "audit/user_canaries.json"
INITIAL_FILE = "audit/initial_params.npz"
#: Stream number of the canaries' directions under their secret key.
_DIRECTION_STREAM = 7


class CanaryError(PollinateError):
    """The canaries of a run are missing or do not fit it."""


@dataclass(frozen=True)
class UserCanaries:
    """M canary devices: a secret key for their directions and a secret coin each."""

    key: int
    included: tuple[bool, ...]
    clip: float
    spec: dict[str, tuple[tuple[int, ...], str]]
    #: Item rows from this one on (the interaction canaries' items, when the run has them)
    #: are left out of every direction, so that the two audits do not blur each other.
    free_items_from: int | None = None

    @classmethod
    def create(
        cls,
        m: int,
        spec: Spec,
        clip: float,
        coins: np.random.Generator,
        free_items_from: int | None = None,
    ) -> UserCanaries:
        """``m`` canaries, each included with probability 1/2 (``coins``: a secret generator)."""
        if m < 1:
            raise ConfigError(f"the number of canaries must be positive, got {m}")
        if not clip > 0:
            raise ConfigError(f"the canaries' norm (the user clip) must be positive, got {clip}")
        included = tuple(bool(b) for b in coins.random(m) < 0.5)
        key = int(coins.integers(0, 2**63)) << 63 | int(coins.integers(0, 2**63))
        shapes = {
            n: (tuple(int(d) for d in shape), str(dtype)) for n, (shape, dtype) in spec.items()
        }
        return cls(
            key=key,
            included=included,
            clip=float(clip),
            spec=shapes,
            free_items_from=free_items_from,
        )

    @property
    def m(self) -> int:
        return len(self.included)

    def direction(self, k: int) -> Arrays:
        """Canary ``k``'s unit direction over every global array (float64)."""
        if not 0 <= k < self.m:
            raise IndexError(f"canary {k} of {self.m}")
        rng = seeded_generator(self.key, _DIRECTION_STREAM, k)
        parts = {n: rng.standard_normal(shape) for n, (shape, _) in self.spec.items()}
        if self.free_items_from is not None:
            n_items = max(shape[0] for shape, _ in self.spec.values() if shape)
            for n, p in parts.items():
                if "item" in n and p.ndim and p.shape[0] == n_items:
                    p[self.free_items_from :] = 0.0
        norm = float(np.sqrt(sum(float(np.sum(p * p)) for p in parts.values())))
        return {n: p / norm for n, p in parts.items()}

    def add_to(self, total: UpdateSum, rate: float, sampler: np.random.Generator) -> int:
        """Add this round's sampled included canaries to ``total``; return how many.

        Each included canary joins with probability ``rate`` (Poisson, as a device does)
        and adds its direction times the clip norm: exactly one user's largest
        contribution. Canaries count in ``total`` like devices but leave no update norm
        in the run log.
        """
        joined = [k for k, d in enumerate(sampler.random(self.m) < rate) if d and self.included[k]]
        for k in joined:
            scaled = {n: self.clip * v for n, v in self.direction(k).items()}
            total._accumulate(scaled)
        return len(joined)

    def scores(self, moved: Mapping[str, np.ndarray]) -> np.ndarray:
        """How far ``moved`` (released model minus initial model) goes along each canary."""
        return np.array(
            [
                sum(
                    float(np.sum(np.asarray(moved[n], np.float64) * d))
                    for n, d in self.direction(k).items()
                )
                for k in range(self.m)
            ]
        )

    # -- the audit-only file -------------------------------------------------------------
    def save(self, run_dir: Path, initial: Mapping[str, np.ndarray]) -> None:
        record = {
            "warning": "AUDIT ONLY: whoever holds this file can tell which canaries took "
            "part; never publish it",
            "key": str(self.key),
            "included": [int(b) for b in self.included],
            "clip": self.clip,
            "spec": {n: [list(shape), dtype] for n, (shape, dtype) in self.spec.items()},
            "free_items_from": self.free_items_from,
        }
        atomic_write_bytes(run_dir / CANARY_FILE, json.dumps(record).encode())
        save_initial(run_dir, initial)

    @classmethod
    def load(cls, run_dir: Path) -> UserCanaries:
        path = run_dir / CANARY_FILE
        if not path.exists():
            raise CanaryError(f"{path} does not exist: the run was made without --audit-canaries")
        try:
            raw = json.loads(path.read_text())
            spec = {
                n: (tuple(int(d) for d in shape), str(dtype))
                for n, (shape, dtype) in raw["spec"].items()
            }
            return cls(
                key=int(raw["key"]),
                included=tuple(bool(b) for b in raw["included"]),
                clip=float(raw["clip"]),
                spec=spec,
                free_items_from=raw.get("free_items_from"),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise CanaryError(f"{path} is not a canary file ({exc})") from exc


def save_initial(run_dir: Path, initial: Mapping[str, np.ndarray]) -> None:
    """Keep the global parameters the run starts from (audit only: canaries are scored by
    how far the released model moved from them)."""
    (run_dir / INITIAL_FILE).parent.mkdir(parents=True, exist_ok=True)
    np.savez(run_dir / INITIAL_FILE, **dict(initial))  # type: ignore[arg-type]


def load_initial(run_dir: Path) -> Arrays:
    """The global parameters the run started from (saved with the canaries)."""
    path = run_dir / INITIAL_FILE
    if not path.exists():
        raise CanaryError(f"{path} does not exist: the run was made without --audit-canaries")
    with np.load(path) as saved:
        return {k: saved[k] for k in saved.files}
