"""A scaling fix for Flower's simulation runtime (flwr 1.41.x), applied by the engine,
and the node config of simulated devices.

Flower's simulation runtime moves messages from its in-memory link state to the Ray
workers with ``vce_api.add_messages_to_queue``: every 0.1 s, for **each** node, it calls
``InMemoryLinkState.get_message_ins(node, limit=1)``, which scans **every** stored
message and validates each one. A round costs nodes × outstanding messages metadata
checks per poll: with 943 devices that is about 9 s per poll, and it is what made a
full-participation round on ML-100K take 45 s of driver CPU while the workers idled
(measured with py-spy: 85% of the driver's time).

:func:`add_messages_to_queue` keeps the contract (each poll hands each node at most one
undelivered message, marks it delivered, drops expired or invalid messages through the
state's own check) in one pass over the stored messages. It is installed only for the
flwr versions it was written against; others keep Flower's own loop, with a warning.
"""

from __future__ import annotations

import logging
import threading
from queue import Queue
from typing import Any

import flwr

LOG = logging.getLogger(__name__)
PATCHED_VERSIONS = ("1.41.",)

#: Extra node-config entries every simulated SuperNode starts with (set by the engine).
#: Flower's Python simulation entry point gives a virtual node only its partition-id; a
#: deployed SuperNode gets the same kind of entries from ``--node-config``.
EXTRA_NODE_CONFIG: dict[str, Any] = {}


def set_node_config(extra: dict[str, Any]) -> None:
    """Give every virtual node of the next simulation these node-config entries."""
    EXTRA_NODE_CONFIG.clear()
    EXTRA_NODE_CONFIG.update(extra)


def _with_node_config(original: Any) -> Any:
    def register(*args: Any, **kwargs: Any) -> Any:
        stores = original(*args, **kwargs)
        for store in stores.values():
            store.node_config.update(EXTRA_NODE_CONFIG)
            for info in store.run_infos.values():
                info.context.node_config.update(EXTRA_NODE_CONFIG)
        return stores

    register.__wrapped__ = original  # type: ignore[attr-defined]
    return register


def add_messages_to_queue(
    state: Any, queue: Queue[Any], nodes_mapping: dict[int, int], f_stop: threading.Event
) -> None:
    """One pass per poll: the first undelivered message of every node goes to ``queue``."""
    from flwr.supercore.date import now

    while not f_stop.is_set():
        with state.lock:
            ids = list(state.message_ins_store.keys())
            # Drops expired messages and those outside the federation, as Flower does.
            state._check_stored_messages(set(ids))
            taken: set[int] = set()
            batch = []
            for msg_id in ids:
                msg = state.message_ins_store.get(msg_id)
                if msg is None or msg.metadata.delivered_at != "":
                    continue
                node = msg.metadata.dst_node_id
                if node in nodes_mapping and node not in taken:
                    taken.add(node)
                    batch.append(msg)
            delivered_at = now().isoformat()
            for msg in batch:
                msg.metadata.delivered_at = delivered_at
        for msg in batch:
            queue.put(msg)
        f_stop.wait(0.1)


def install() -> bool:
    """Install the fix if this flwr is a version it was written for; say so either way."""
    from flwr.server.superlink.fleet.vce import vce_api

    if not flwr.__version__.startswith(PATCHED_VERSIONS):
        LOG.warning(
            "flwr %s is not one of %s: Flower's own message polling is kept, and large "
            "simulations may be slow",
            flwr.__version__,
            PATCHED_VERSIONS,
        )
        return False
    vce_api.add_messages_to_queue = add_messages_to_queue
    if not hasattr(vce_api._register_node_info_stores, "__wrapped__"):
        vce_api._register_node_info_stores = _with_node_config(vce_api._register_node_info_stores)
    return True
