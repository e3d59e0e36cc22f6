"""The scaling fix keeps Flower's contract: one undelivered message per node per poll."""

from __future__ import annotations

import threading
from queue import Queue
from types import SimpleNamespace
from typing import Any

from pollinate.simulations import flower_patches


class FakeState:
    """Just what the polling loop touches of Flower's InMemoryLinkState."""

    def __init__(self, messages: dict[str, Any], expired: set[str]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = messages
        self.expired = expired
        self.checked: set[str] = set()

    def _check_stored_messages(self, ids: set[str]) -> None:
        self.checked |= ids
        for msg_id in ids & self.expired:
            del self.message_ins_store[msg_id]


def msg(node: int, delivered: str = "") -> Any:
    return SimpleNamespace(metadata=SimpleNamespace(dst_node_id=node, delivered_at=delivered))


def one_poll(state: FakeState, nodes: dict[int, int]) -> list[Any]:
    queue: Queue[Any] = Queue()
    stop = threading.Event()
    thread = threading.Thread(
        target=flower_patches.add_messages_to_queue, args=(state, queue, nodes, stop)
    )
    thread.start()
    stop.set()  # the loop polls once, then sees the stop event
    thread.join(timeout=5)
    return [queue.get_nowait() for _ in range(queue.qsize())]


def test_each_node_gets_its_first_undelivered_message_once() -> None:
    m = {
        "a": msg(1),
        "b": msg(1),  # second message of node 1: waits for the next poll
        "c": msg(2, delivered="yesterday"),  # in flight already
        "d": msg(2),
        "e": msg(3),  # expired: dropped by the state's own check
        "f": msg(99),  # not a node of this simulation
    }
    all_ids = set(m)
    state = FakeState(m, expired={"e"})
    got = one_poll(state, {1: 0, 2: 1, 3: 2})
    assert got == [m["a"], m["d"]]
    assert all(x.metadata.delivered_at != "" for x in got)
    assert m["b"].metadata.delivered_at == ""
    assert "e" not in state.message_ins_store and state.checked == all_ids
    assert one_poll(state, {1: 0, 2: 1, 3: 2}) == [m["b"]]


def test_install_replaces_flowers_loop_for_the_pinned_version() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    assert flower_patches.install()
    assert vce_api.add_messages_to_queue is flower_patches.add_messages_to_queue
