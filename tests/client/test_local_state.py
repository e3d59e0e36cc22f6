from __future__ import annotations

import numpy as np
from flwr.app import Context, RecordDict

from pollinate.client.local_state import ContextStateStore, DiskStateStore


def test_disk_store_loads_the_state_from_before_the_round(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = DiskStateStore(tmp_path, "device-3")
    assert store.load(before_round=1) is None
    store.save(2, {"p": np.array([2.0])})
    store.save(5, {"p": np.array([5.0])})
    # Re-running round 5 (after a server crash) starts from round 2's state.
    np.testing.assert_array_equal(store.load(before_round=5)["p"], [2.0])  # type: ignore[index]
    np.testing.assert_array_equal(store.load(before_round=6)["p"], [5.0])  # type: ignore[index]
    store.save(7, {"p": np.array([7.0])})
    assert sorted(p.name for p in (tmp_path / "device-3").iterdir()) == ["r5.npz", "r7.npz"]


def test_context_store_keeps_state_in_the_node_state() -> None:
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    store = ContextStateStore(ctx)
    assert store.load(before_round=3) is None
    store.save(2, {"p": np.array([1.0, 2.0], np.float32)})
    np.testing.assert_array_equal(ContextStateStore(ctx).load(3)["p"], [1.0, 2.0])  # type: ignore[index]
    assert ContextStateStore(ctx).load(2) is None
