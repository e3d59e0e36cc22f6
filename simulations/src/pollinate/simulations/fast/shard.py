"""A shard: the simulated devices one fast-engine worker plays, one after another.

Each device runs the ClientApp's own device step (:func:`pollinate.client.app.train_step`
and :func:`~pollinate.client.app.evaluate_step`: its policy, the same model, Opacus
DP-SGD, the device's ledger), up to the reply it would send: its update's arrays and its
metrics (:class:`~pollinate.client.app.DeviceReply`). What differs from Flower is only
what happens to that reply: it is never serialised. The device's allow-list check and
the server's (:func:`pollinate.shared.wire.check_reply`, the function that
``check_outgoing`` and ``check_incoming`` apply to a decoded message) run on these very
arrays: the same names, shapes, dtypes, finiteness, norm bound and metric keys. An
accepted update is added to one running sum (clipped under user-level DP:
:class:`~pollinate.server.user_dp.ClippedSum`, the server's own class), returned once per
round. Evaluation returns every device's sums in one reply.

The log lines a Flower round writes for each message (``messages.jsonl``) are computed
here from each reply's actual arrays and metrics (:func:`reply_entry`, the fields of
:func:`~pollinate.server.runlog.message_entry`) and returned with the sum, so a fast
run's logs say what a Flower run's do.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, RecordDict

from pollinate.client.app import DeviceReply, evaluate_step, train_step
from pollinate.client.policy import NODE_CONFIG_KEY, DevicePolicy
from pollinate.server.aggregate import UpdateSum
from pollinate.server.federation import EvaluationRound, RoundResult, no_examples_entry
from pollinate.server.runlog import row_density, verdict_entry
from pollinate.server.user_dp import ClippedSum
from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.ledger import LedgerEvent
from pollinate.shared.wire import (
    METRICS_RECORD,
    UPDATE_RECORD,
    AllowListError,
    ParamSpec,
    Reply,
    check_reply,
)
from pollinate.simulations.fast.store import ShardStore, pack_versions, unpack_versions

Arrays = dict[str, np.ndarray]
LOG = logging.getLogger("pollinate.fast")


@dataclass(frozen=True)
class ShardSpec:
    """What a shard needs to play its devices (sent once, when the worker starts)."""

    partitions: tuple[int, ...]
    policy: DevicePolicy
    spec: ParamSpec
    #: The run's ``--dp`` mode, task and whether the catalogue has genres (allow-list).
    dp: str
    task: str
    genres: bool
    #: User-level clip norm S (the shard's sum is then a sum of clipped updates).
    user_clip: float | None
    aggregation: str


@dataclass
class ShardTrain:
    """One shard's part of a training round: one sum, and what the server logs of it."""

    total: UpdateSum
    result: RoundResult
    entries: list[dict[str, Any]] = field(default_factory=list)
    events: list[LedgerEvent] = field(default_factory=list)


@dataclass
class ShardEval:
    """One shard's part of an evaluation round: every device's sums, in one reply."""

    round: EvaluationRound
    entries: list[dict[str, Any]] = field(default_factory=list)
    events: list[LedgerEvent] = field(default_factory=list)


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


@lru_cache(maxsize=64)
def _npy_bytes(shape: tuple[int, ...], dtype: np.dtype[Any]) -> int:
    """Bytes of an array of this shape and dtype as a Flower ``Array`` (``np.save``'s
    output, header included): its size depends on the shape and dtype only."""
    buffer = io.BytesIO()
    np.save(buffer, np.zeros(shape, dtype=dtype), allow_pickle=False)
    return len(buffer.getvalue())


def reply_entry(round_: int, node: int, reply: DeviceReply) -> dict[str, Any]:
    """The ``messages.jsonl`` line of a device's reply, from its arrays and metrics: the
    line :func:`~pollinate.server.runlog.message_entry` writes for the message they would
    be packed into (``reply.content()``), without packing them."""
    update = reply.update or {}
    entry: dict[str, Any] = {
        "round": round_,
        "direction": "up",
        "node": node,
        "kind": reply.kind,
        "records": sorted([METRICS_RECORD, *([UPDATE_RECORD] if reply.update is not None
                                                else [])]),
        "arrays": {n: list(a.shape) for n, a in update.items()},
        "metrics": sorted(reply.metrics),
        "bytes": sum(_npy_bytes(a.shape, a.dtype) for a in update.values())
        + 8 * len(reply.metrics),
    }  # fmt: skip
    if reply.kind == "train":
        density = {n: row_density(a) for n, a in update.items()}
        entry["row_density"] = {n: d for n, d in density.items() if d is not None}
    return entry


class Shard:
    """The devices of one worker, their state, and their per-round sums."""

    def __init__(self, spec: ShardSpec) -> None:
        self.spec = spec
        self.partitions = set(spec.partitions)
        self.stores: dict[int, ShardStore] = {}
        self.events: list[LedgerEvent] = []
        self.node_config = {NODE_CONFIG_KEY: spec.policy.to_json()}
        root = spec.policy.state_dir
        self.root = Path(root) if root else None

    def _context(self, partition: int) -> Context:
        """The node context of a simulated device (what Flower gives a virtual node)."""
        return Context(
            run_id=0,
            node_id=partition,
            node_config={**self.node_config, "partition-id": partition},
            state=RecordDict(),
            run_config={},
        )

    def _store(self, partition: int) -> ShardStore:
        store = self.stores.get(partition)
        if store is None:
            store = self.stores[partition] = ShardStore(
                self.root, f"device-{partition}", self.events
            )
        return store

    def _eval_store(self, partition: int) -> ShardStore:
        """A device's store for evaluating: kept only if it holds something or may charge
        its accountant (a noised evaluation), so that evaluating 100,000 never-trained
        devices keeps no 100,000 stores."""
        store = self.stores.get(partition)
        if store is not None or self.spec.policy.local_dp:
            return self._store(partition)
        return ShardStore(self.root, f"device-{partition}", self.events)

    def _own(self, partitions: list[int]) -> None:
        stray = sorted(set(partitions) - self.partitions)
        if stray:
            raise PollinateError(f"devices {stray[:5]} are not in this shard")

    def enroll(self, config: dict[str, Any] | None = None) -> list[int]:
        """Every device's key (the partition-id of a simulated device).

        With the run's device ``config``, the shard also loads the dataset's partition
        and builds the model its devices share, as a Flower worker process does on its
        first message: once, at enrolment, instead of inside the first round.
        """
        from pollinate.client.app import device_key, warm_up

        keys = [device_key(self._context(p)) for p in sorted(self.partitions)]
        if config is not None and keys:
            warm_up(config, self._context(min(self.partitions)))
        return keys

    def _check(
        self,
        reply: DeviceReply,
        round_: int,
        node: int,
        entries: list[dict[str, Any]],
        rejected: dict[str, int],
        refused: dict[str, int],
    ) -> Reply | None:
        """The server's check of one reply (``Server._check``), on its arrays and metrics."""
        s = self.spec
        kind = reply.kind
        try:
            got = check_reply(kind, reply.update, reply.metrics,
                              spec=s.spec if kind == "train" else {}, incoming=True, dp=s.dp,
                              task=s.task, genres=s.genres)  # fmt: skip
        except AllowListError as exc:
            _count(rejected, exc.reason)
            entries.append(verdict_entry(round_, node, kind, "rejected", exc.reason, str(exc)))
            LOG.warning("round %d: rejected the %s reply of device %d: %s", round_, kind, node,
                        exc)  # fmt: skip
            return None
        if got.refused is not None:
            _count(refused, got.refused)
            entries.append(verdict_entry(round_, node, kind, "refused", got.refused))
            return None
        return got

    def train(
        self, round_: int, params: Arrays, config: dict[str, Any], partitions: list[int]
    ) -> ShardTrain:
        """Train ``partitions`` in turn from ``params``; return their sum (see module doc)."""
        self._own(partitions)
        s = self.spec
        total = UpdateSum(s.spec) if s.user_clip is None else ClippedSum(s.spec, s.user_clip)
        result = RoundResult()
        out = ShardTrain(total, result)
        start = len(self.events)
        for p in partitions:
            try:
                reply = train_step(s.policy, dict(config), params, self._context(p),
                                   store=self._store(p))  # fmt: skip
                reply.check(s.spec)  # the device's own check, before anything leaves
            except Exception as exc:  # as a failed ClientApp on Flower: counted, not used
                LOG.warning("round %d: device %d failed: %s", round_, p, exc)
                result.failed += 1
                continue
            out.entries.append(reply_entry(round_, p, reply))
            got = self._check(reply, round_, p, out.entries, result.rejected_reasons,
                              result.refused)  # fmt: skip
            if got is None:
                continue
            # What Server.train_round does with an accepted reply.
            if result.use(got, total, s.aggregation) == "no-examples":
                out.entries.append(no_examples_entry(round_, p))
        result.rejected = sum(result.rejected_reasons.values())
        out.events = self.events[start:]
        return out

    def evaluate(
        self, round_: int, params: Arrays, config: dict[str, Any], partitions: list[int] | None
    ) -> ShardEval:
        """Evaluate ``partitions`` (``None``: all of the shard's) on ``params``."""
        chosen = sorted(self.partitions) if partitions is None else partitions
        self._own(chosen)
        out = ShardEval(EvaluationRound())
        ev = out.round
        start = len(self.events)
        for p in chosen:
            try:
                reply = evaluate_step(self.spec.policy, dict(config), params,
                                      self._context(p), store=self._eval_store(p))  # fmt: skip
                reply.check({})
            except Exception as exc:
                LOG.warning("round %d: device %d failed to evaluate: %s", round_, p, exc)
                ev.failed += 1
                continue
            out.entries.append(reply_entry(round_, p, reply))
            got = self._check(reply, round_, p, out.entries, ev.rejected_reasons,
                              ev.refused)  # fmt: skip
            if got is None:
                continue
            ev.noised.append(got.noised)
            ev.parts.append({k: float(v) for k, v in got.metrics.items() if k != "local-epsilon"})
        out.events = self.events[start:]
        return out

    def snapshot(self) -> Arrays:
        """Every device's kept private versions, packed (:func:`.store.pack_versions`)."""
        return pack_versions(sorted(self.stores.items()))

    def restore(self, pack: Arrays) -> int:
        """Load the private versions of a snapshot's entries (all of them this shard's
        devices') into the devices' stores; returns how many devices got state."""
        entries = unpack_versions(pack, np.argsort(pack["round"], kind="stable"))
        self._own(sorted({p for p, _, _ in entries}))
        for partition, round_, arrays in entries:
            self._store(partition).save(round_, arrays)
        return len({p for p, _, _ in entries})

    def save_private_states(self) -> int:
        """Write every device's latest private parameters to its folder (the layout of
        :class:`~pollinate.client.local_state.DiskStateStore`), for the simulation oracle."""
        n = 0
        for store in self.stores.values():
            latest = store.latest()
            if latest is not None and store.disk is not None:
                store.disk.save(*latest)
                n += 1
        return n
