"""The item catalogue that travels with the model to real devices.

A real device knows items by the app's own ids (strings) and keeps its events in its
store; row ``i`` of the model's item tables is the catalogue's item ``i``. The server
sends the catalogue (:data:`~pollinate.shared.wire.CATALOGUE_RECORD`: item ids, genres,
popularity, rating scale) beside the global parameters in every train and evaluate
message, so a device that joins late, restarts or lost its store trains on the right rows
without another round trip. Popularity is counted on the training rows of the dataset the
operator loads (the operator's own, public data), never on anything a device sent.

:class:`CatalogueGrid` adds it to the outgoing messages of the run's Grid, so the round
loop (:mod:`pollinate.server.federation`) stays the same in simulations and deployments.
On a deployment's Grid (Flower's ``HttpGrid``, whose ``send_and_receive`` looks for
replies every 3 s) it also waits for the replies itself, every
:data:`REPLY_POLL_S` seconds, so a round ends when its last reply is in, not up to 3 s
later; what it waits for and for how long (``timeout``) are unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MessageType
from flwr.serverapp import Grid

from pollinate.shared.catalogue import Catalogue
from pollinate.shared.tasks import TaskData
from pollinate.shared.wire import CATALOGUE_RECORD, arrays_to_record

#: The message types that carry the model, and therefore the catalogue.
_WITH_MODEL = (MessageType.TRAIN, MessageType.EVALUATE)
#: Seconds between two looks for replies on a deployment's Grid (Flower's: 3).
REPLY_POLL_S = 0.2


def server_catalogue(task_data: TaskData) -> Catalogue:
    """The catalogue of the operator's dataset, popularity from its training rows."""
    return Catalogue.from_interactions(task_data.data, task_data.split.train)


class CatalogueGrid:
    """A Grid that adds the catalogue record to every train and evaluate message.

    Everything else is the wrapped Grid's (``get_node_ids``, ``pull_messages``, ...).
    """

    def __init__(self, grid: Grid, catalogue: Catalogue) -> None:
        self._grid = grid
        self._record: ArrayRecord = arrays_to_record(catalogue.to_arrays())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def _with_catalogue(self, messages: Iterable[Message]) -> list[Message]:
        out = list(messages)
        for message in out:
            if message.metadata.message_type in _WITH_MODEL:
                message.content[CATALOGUE_RECORD] = self._record
        return out

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._grid.push_messages(self._with_catalogue(messages))

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        if not _polls_slowly(self._grid):
            return self._grid.send_and_receive(self._with_catalogue(messages), timeout=timeout)
        return poll_replies(self._grid, self._with_catalogue(messages), timeout, REPLY_POLL_S)


def _polls_slowly(grid: Any) -> bool:
    from flwr.superlink.grid.http_grid import HttpGrid

    return isinstance(grid, HttpGrid)


def poll_replies(
    grid: Any, messages: Iterable[Message], timeout: float | None, interval: float
) -> list[Message]:
    """``Grid.send_and_receive`` (push, then pull until every message has its reply or
    ``timeout`` seconds passed; None: no limit), looking every ``interval`` seconds."""
    pending = set(grid.push_messages(messages))
    deadline = None if timeout is None else time.monotonic() + timeout
    replies: list[Message] = []
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(interval)
    return replies


def with_catalogue(grid: Grid, task_data: TaskData) -> Grid:
    """``grid``, sending the catalogue of ``task_data`` with the model."""
    return CatalogueGrid(grid, server_catalogue(task_data))  # type: ignore[return-value]
