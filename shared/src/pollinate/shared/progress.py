"""Progress of the slow set-up steps of a long command (loading data, starting Ray,
calibrating noise): one line on stderr when the step starts and how long it took."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO


@contextmanager
def step(message: str, *, enabled: bool = True, stream: TextIO | None = None) -> Iterator[None]:
    """Print ``message…`` before the block and ``done (T s)`` after it (nothing when off)."""
    out = stream if stream is not None else sys.stderr
    if not enabled:
        yield
        return
    print(f"{message}…", file=out, flush=True)
    start = time.perf_counter()
    yield
    print(f"  {message}: done ({time.perf_counter() - start:.1f} s)", file=out, flush=True)
