"""A pool of Ray actors, each owning one shard of the simulated devices.

Devices are dealt to shards round-robin by partition (``p % workers``), so heavy and
light users spread evenly. Each actor asks Ray for one CPU and actors are spread over the
cluster's nodes; with ``address`` the pool joins a running cluster (``ray start``), else it
starts a local one on this machine's cores.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from pollinate.shared.errors import PollinateError
from pollinate.simulations.fast.shard import Shard, ShardEval, ShardSpec, ShardTrain
from pollinate.simulations.fast.store import concat_packs, deal_versions

Arrays = dict[str, np.ndarray]


class FastEngineError(PollinateError):
    """The fast engine cannot run this configuration, or its cluster failed."""


@lru_cache(maxsize=1)
def _worker_class() -> Any:
    import ray

    @ray.remote(num_cpus=1)
    class ShardWorker:
        """One shard in one Ray actor (one process, one core)."""

        def __init__(self, spec: ShardSpec) -> None:
            from pollinate.shared.threads import use_one_thread

            use_one_thread()
            self.shard = Shard(spec)

        def ready(self) -> tuple[int, str]:
            return os.getpid(), ray.get_runtime_context().get_node_id()

        def enroll(self, config: dict[str, Any] | None = None) -> list[int]:
            return self.shard.enroll(config)

        def train(
            self, round_: int, params: Arrays, config: dict[str, Any], parts: list[int]
        ) -> ShardTrain:
            # Ray hands out read-only views of the object store: one writable copy a round.
            own = {k: np.array(v) for k, v in params.items()}
            return self.shard.train(round_, own, config, parts)

        def evaluate(
            self, round_: int, params: Arrays, config: dict[str, Any], parts: list[int] | None
        ) -> ShardEval:
            own = {k: np.array(v) for k, v in params.items()}
            return self.shard.evaluate(round_, own, config, parts)

        def save_private_states(self) -> int:
            return self.shard.save_private_states()

        def snapshot(self) -> Arrays:
            return self.shard.snapshot()

        def restore(self, pack: Arrays) -> int:
            return self.shard.restore(pack)

    return ShardWorker


def connect(address: str | None, *, num_cpus: int | None = None) -> bool:
    """Start or join Ray; returns whether this call started it (and should shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    kwargs: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": True}
    if address is None:
        kwargs.update(
            num_cpus=num_cpus or os.cpu_count() or 1,
            include_dashboard=False,
            # Sums and parameters are small: a small object store keeps the footprint down.
            object_store_memory=256 * 1024 * 1024,
        )
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise FastEngineError(
            f"could not {'join the Ray cluster at ' + address if address else 'start Ray'}: "
            f"{exc}. Check the address (ray start prints it) and that this machine reaches it"
        ) from exc
    return True


def cluster_cpus() -> int:
    import ray

    return int(ray.cluster_resources().get("CPU", 0))


class ShardPool:
    """The actors of one run and the shard each device belongs to."""

    def __init__(self, specs: Sequence[ShardSpec]) -> None:
        import ray

        if not specs:
            raise FastEngineError("the fast engine needs at least one worker")
        worker = _worker_class()
        self.workers = [worker.options(scheduling_strategy="SPREAD").remote(spec) for spec in specs]
        self.owner = {p: i for i, spec in enumerate(specs) for p in spec.partitions}
        #: (process id, Ray node id) of every worker.
        self.placement: list[tuple[int, str]] = ray.get([w.ready.remote() for w in self.workers])

    def _split(self, nodes: Sequence[int]) -> dict[int, list[int]]:
        by_shard: dict[int, list[int]] = {}
        for node in nodes:
            by_shard.setdefault(self.owner[node], []).append(node)
        return by_shard

    def enroll(self, config: dict[str, Any] | None = None) -> list[int]:
        """Every device's key; with the round ``config``, each shard also loads its
        devices' data and builds its model (see :meth:`Shard.enroll`)."""
        import ray

        calls = [w.enroll.remote(config) for w in self.workers]
        return [k for keys in ray.get(calls) for k in keys]

    def train(
        self, round_: int, params: Arrays, config: dict[str, Any], nodes: Sequence[int]
    ) -> list[ShardTrain]:
        import ray

        ref = ray.put(params)
        calls = [
            self.workers[i].train.remote(round_, ref, config, parts)
            for i, parts in sorted(self._split(nodes).items())
        ]
        return list(ray.get(calls))

    def evaluate(
        self,
        round_: int,
        params: Arrays,
        config: dict[str, Any],
        nodes: Sequence[int],
        *,
        everyone: bool = False,
    ) -> list[ShardEval]:
        import ray

        ref = ray.put(params)
        if everyone:  # every device of every shard: no list of 100,000 ids to send
            calls = [w.evaluate.remote(round_, ref, config, None) for w in self.workers]
        else:
            calls = [
                self.workers[i].evaluate.remote(round_, ref, config, parts)
                for i, parts in sorted(self._split(nodes).items())
            ]
        return list(ray.get(calls))

    def save_private_states(self) -> int:
        import ray

        return sum(ray.get([w.save_private_states.remote() for w in self.workers]))

    def snapshot(self) -> Arrays:
        """Every device's kept private versions, from all shards, as one pack."""
        import ray

        return concat_packs(ray.get([w.snapshot.remote() for w in self.workers]))

    def restore(self, pack: Arrays, through_round: int) -> int:
        """Give each shard its devices' versions of ``pack`` up to ``through_round`` (the
        checkpoint's round: later versions belong to rounds that will be run again);
        returns how many devices got state. Shards need not be dealt as when it was
        written (another ``--workers``)."""
        import ray

        parts = deal_versions(pack, self.owner, len(self.workers), through_round)
        return sum(ray.get([w.restore.remote(p) for w, p in zip(self.workers, parts, strict=True)]))

    def close(self) -> None:
        import ray

        for w in self.workers:
            ray.kill(w)
        self.workers = []
