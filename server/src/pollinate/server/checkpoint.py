"""Atomic checkpoints of a federated run: round, global parameters, optimizer, RNG, and the
iterate average when the run keeps one."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.shared.errors import PollinateError
from pollinate.shared.fileio import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.npz"


class CheckpointError(PollinateError):
    """A checkpoint is missing or unreadable."""


@dataclass
class Checkpoint:
    round: int
    params: dict[str, np.ndarray]
    optimizer: dict[str, np.ndarray]
    #: The device sampler's state; ``None`` for a secure generator, which is never saved.
    rng_state: dict[str, Any] | None
    extra: dict[str, Any]
    #: :class:`pollinate.server.averaging.IterateAverage` state (empty without one).
    average: dict[str, np.ndarray] = field(default_factory=dict)


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> Path:
    arrays = {f"param/{n}": a for n, a in ckpt.params.items()}
    arrays.update({f"opt/{n}": a for n, a in ckpt.optimizer.items()})
    arrays.update({f"avg/{n}": a for n, a in ckpt.average.items()})
    meta = {"round": ckpt.round, "rng_state": ckpt.rng_state, "extra": ckpt.extra}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    path = run_dir / CHECKPOINT_NAME
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_checkpoint(run_dir: Path) -> Checkpoint:
    path = run_dir / CHECKPOINT_NAME
    if not path.exists():
        raise CheckpointError(
            f"no checkpoint at {path}; --resume needs the run directory of an earlier run"
        )
    try:
        with np.load(path) as z:
            meta = json.loads(bytes(z["meta"]).decode())
            params = {k[6:]: z[k] for k in z.files if k.startswith("param/")}
            opt = {k[4:]: z[k] for k in z.files if k.startswith("opt/")}
            avg = {k[4:]: z[k] for k in z.files if k.startswith("avg/")}
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} is unreadable: {exc}") from exc
    return Checkpoint(meta["round"], params, opt, meta["rng_state"], meta["extra"], avg)
