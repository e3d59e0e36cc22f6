"""The server's round over shard sums: :class:`pollinate.server.federation.Server`, with
the exchange of messages replaced by one call per shard.

Everything the server decides stays the server's own code: enrolment order, Poisson
sampling, the aggregation and its user-level DP noise, the server optimizer, the iterate
average, the accountant, checkpoints, the run log and the release directory
(``Server.run``, ``Server.aggregate``, ...). Only how a round reaches the devices differs:
``train_round`` asks each shard for one sum of its sampled devices' accepted updates
(:class:`~pollinate.simulations.fast.shard.Shard`), adds the shards' sums into the
server's own running sum and aggregates it; ``evaluation_round`` and ``enroll`` get one
reply per shard. Ledger events that devices charged are copied into the run's ledger
before the round's sum is used, as a simulated Flower device does before it replies.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, cast

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp import Grid

from pollinate.server.federation import (
    EvaluationRound,
    FederationError,
    RoundResult,
    Server,
)
from pollinate.server.runlog import JsonlWriter, message_entry
from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.ledger import LedgerEvent
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import METRICS_RECORD
from pollinate.simulations.fast.pool import ShardPool
from pollinate.simulations.fast.store import read_snapshot, write_snapshot


class _Devices:
    """What the server sees of the devices instead of a Flower ``Grid``: their ids."""

    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> Iterable[int]:
        return range(self.n)

    def send_and_receive(self, *args: Any, **kwargs: Any) -> Any:
        raise FederationError("the fast engine sends no per-device messages")


def append_events(path: Path, events: Sequence[LedgerEvent]) -> None:
    """Append ``events`` to the run's ledger, flushed and fsync'ed once (the format of
    :class:`~pollinate.shared.privacy.ledger.LedgerWriter`)."""
    if not events:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write("".join(e.to_json() + "\n" for e in events))
        fh.flush()
        os.fsync(fh.fileno())


def _merge_counts(into: dict[str, int], other: dict[str, int]) -> None:
    for k, v in other.items():
        into[k] = into.get(k, 0) + v


class FastServer(Server):
    """:class:`Server` whose rounds go to a :class:`ShardPool` (see the module docstring).

    Each checkpoint first writes the devices' private parameters, which live in the
    shards' memory, to ``states_path`` (the simulated devices' disk); a resume reads them
    back into the shards (:meth:`resume`).
    """

    engine = "fast"

    def __init__(
        self,
        pool: ShardPool,
        cfg: FederationConfig,
        catalog: Catalog,
        n_devices: int,
        states_path: Path,
    ) -> None:
        super().__init__(cast(Grid, _Devices(n_devices)), cfg, catalog, n_devices)
        self.pool = pool
        self.states_path = states_path
        #: Called with (round, global parameters) after each round's server step (a
        #: read-only view: copy what you keep), for diagnostics of the iterates.
        self.on_round: Callable[[int, dict[str, Any]], None] | None = None

    def checkpoint(self, round_: int) -> None:
        # The devices' state first: a crash between the two writes leaves states one round
        # ahead of the checkpoint, and resume drops the versions of the rounds it reruns.
        write_snapshot(self.states_path, round_, self.n_devices, self.pool.snapshot())
        super().checkpoint(round_)

    def resume(self) -> None:
        super().resume()
        through = self.start_round - 1
        written, pack = read_snapshot(self.states_path, self.n_devices)
        if written not in (through, through + 1):
            raise FederationError(
                f"{self.states_path} holds the devices' state after round {written}, and the "
                f"checkpoint is of round {through}: they are not of one run; start it again"
            )
        self.pool.restore(pack, through)

    def aggregate(self, round_: int, result: RoundResult, total: Any = None) -> None:
        super().aggregate(round_, result, total)
        if self.on_round is not None:
            self.on_round(round_, self.params)

    def _log_down(
        self, round_: int, nodes: Sequence[int], kind: str, extra: dict[str, Any], log: JsonlWriter
    ) -> dict[str, Any]:
        """Log the message each device would have got (one content for all), return its
        config."""
        params = self.released() if kind == "evaluate" else self.params
        content = self._content(round_, params, extra) if kind != "enroll" else RecordDict()
        entry = message_entry(round_, "down", 0, kind, content)
        log.write_per_node(entry, nodes)
        return dict(self.device_config, round=round_, **extra)

    def enroll(self, nodes: Sequence[int], log: JsonlWriter) -> list[int]:
        self._log_down(0, nodes, "enroll", {}, log)
        keys = self.pool.enroll(dict(self.device_config, round=0))
        for key in keys:
            content = RecordDict({METRICS_RECORD: MetricRecord({"device-key": key})})
            log.write(message_entry(0, "up", key, "enroll", content))
        if len(set(keys)) != len(keys):
            raise FederationError("two devices enrolled with the same device key")
        if sorted(keys) != sorted(nodes):
            raise FederationError(
                f"{len(nodes)} devices were expected and the shards hold {len(keys)}"
            )
        # A simulated device's key is its partition-id, which is also its id here.
        return sorted(keys)

    def _ledger(self, events: list[LedgerEvent]) -> None:
        try:
            append_events(self.ledger_path, events)
        except OSError as exc:
            raise FederationError(
                f"could not copy {len(events)} device ledger events into {self.ledger_path} "
                f"({exc}); the round's sums were not used"
            ) from exc

    def train_round(self, round_: int, nodes: Sequence[int], log: JsonlWriter) -> RoundResult:
        config = self._log_down(round_, nodes, "train", {}, log)
        shards = self.pool.train(round_, self.params, config, nodes)
        self._ledger([e for s in shards for e in s.events])
        result = RoundResult()
        total = self.round_sum()
        for shard in shards:
            log.write_all(shard.entries)
            part, other = shard.result, shard.total
            for n, t in total.total.items():
                t += other.total[n]
            total.count += other.count
            total.weight += other.weight
            total.norms.extend(other.norms)
            result.aggregated += part.aggregated
            result.losses.extend(part.losses)
            result.examples += part.examples
            result.device_seconds += part.device_seconds
            _merge_counts(result.rejected_reasons, part.rejected_reasons)
            _merge_counts(result.refused, part.refused)
            result.failed += part.failed
            result.dp_stopped += part.dp_stopped
            result.local_epsilons.extend(part.local_epsilons)
        result.rejected = sum(result.rejected_reasons.values())
        self.aggregate(round_, result, total)
        return result

    def evaluation_round(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> EvaluationRound:
        config = self._log_down(round_, nodes, "evaluate", {"part": part}, log)
        everyone = len(nodes) == self.n_devices
        shards = self.pool.evaluate(round_, self.released(), config, nodes, everyone=everyone)
        self._ledger([e for s in shards for e in s.events])
        out = EvaluationRound()
        for shard in shards:
            log.write_all(shard.entries)
            ev = shard.round
            out.parts.extend(ev.parts)
            out.noised.extend(ev.noised)
            _merge_counts(out.rejected_reasons, ev.rejected_reasons)
            _merge_counts(out.refused, ev.refused)
            out.failed += ev.failed
        return out
