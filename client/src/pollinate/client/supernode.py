"""Flower's ``flower-supernode``, looking for messages every second instead of every 3.

Flower 1.41's SuperNode, when a pull finds no message, sleeps a fixed 3 s before the
next (``flwr.supernode.start_client_internal``: ``time.sleep(3)``); every round of a
deployment therefore starts up to 3 s late on each device, on average 1.5 s, and the
last of five devices about 2.5 s. ``python -m pollinate.client.supernode ARGS`` runs
Flower's own ``flower-supernode`` entry point with ``ARGS`` unchanged, with the sleeps of
that one module capped at :data:`IDLE_PULL_S`. Nothing else differs: the same process
model, TLS, node authentication and Runtime API. ``pollinate device join`` uses it with
the warm executor (:mod:`pollinate.client.executor`); ``warm=False`` runs Flower's
``flower-supernode`` as it is.
"""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any

#: Seconds between two pulls of an idle SuperNode (Flower's: 3).
IDLE_PULL_S = 1.0


class _CappedClock:
    """The ``time`` module, except that ``sleep`` waits at most ``cap`` seconds."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))


def cap_idle_pull(module: ModuleType, cap: float = IDLE_PULL_S) -> None:
    """Cap the sleeps of Flower's SuperNode loop (``module``) at ``cap`` seconds."""
    if not isinstance(getattr(module, "time", None), ModuleType | _CappedClock):
        raise RuntimeError(
            f"{module.__name__} has no `time` module to tune (another Flower version?); "
            "join with warm=False to run flower-supernode as it is"
        )
    module.time = _CappedClock(cap)  # type: ignore[attr-defined]


def main() -> None:
    import flwr.supernode.start_client_internal as loop
    from flwr.supernode.cli.flower_supernode import flower_supernode

    cap_idle_pull(loop)
    flower_supernode()


if __name__ == "__main__":
    main()
