from __future__ import annotations

import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from pollinate.client.local_state import ContextStateStore, DiskStateStore, StateStoreError
from pollinate.shared.privacy.ledger import LedgerEvent, local_event


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


def _event(round_: int, epsilon: float) -> LedgerEvent:
    return local_event(
        round_=round_,
        device="3",
        release=(1.0, 0.5, 4),
        clip_norm=0.5,
        delta=1e-5,
        accountant="pld",
        epsilon=epsilon,
    )


def test_the_accountant_is_the_devices_own_ledger_and_survives_a_new_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = DiskStateStore(tmp_path, "device-3")
    assert store.load_history() == []
    store.charge(_event(1, 1.0))
    store.charge(_event(2, 2.0))
    # A restarted device (a new store over the same directory) knows what it spent.
    assert DiskStateStore(tmp_path, "device-3").load_history() == [(1.0, 0.5, 4)] * 2


def test_a_cut_short_append_is_dropped_and_other_damage_is_an_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    store = DiskStateStore(tmp_path, "device-3")
    store.charge(_event(1, 1.0))
    with store.ledger_path.open("a") as fh:
        fh.write(_event(2, 2.0).to_json()[:40])  # a crash in the middle of the write
    assert store.load_history() == [(1.0, 0.5, 4)]
    store.charge(_event(2, 2.0))
    assert [e.round for e in store.events()] == [1, 2]
    # A flipped byte inside a committed line: the device cannot know what it spent.
    raw = bytearray(store.ledger_path.read_bytes())
    raw[5] = ord("#")
    store.ledger_path.write_bytes(bytes(raw))
    with pytest.raises(StateStoreError, match=r"line 1: not a ledger event"):
        store.load_history()


def test_a_memory_store_keeps_no_accountant() -> None:
    ctx = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(), run_config={})
    with pytest.raises(StateStoreError, match="durable store"):
        ContextStateStore(ctx).charge(_event(1, 1.0))


_WRITER = """
import sys
from pathlib import Path
from pollinate.client.local_state import DiskStateStore
from pollinate.shared.privacy.ledger import local_event
store = DiskStateStore(Path(sys.argv[1]), "device-3")
r = len(store.events())
while True:
    r += 1
    store.charge(local_event(round_=r, device="3", release=(1.0, 0.5, 4), clip_norm=0.5,
                             delta=1e-5, accountant="pld", epsilon=float(r)))
    print(r, flush=True)
"""


def test_a_writer_killed_at_random_points_loses_no_committed_release(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = random.Random(0)
    committed = 0
    for _ in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        # Wait until it has committed at least one more release, then kill it anywhere.
        first = int(proc.stdout.readline())
        time.sleep(rng.uniform(0.0, 0.05))
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        printed = [first] + [int(x) for x in out.split()]
        events = DiskStateStore(tmp_path, "device-3").events()
        rounds = [e.round for e in events]
        # Every release it reported as committed is there, in order, once; at most the
        # one it was writing when killed is there too (committed, not yet reported).
        assert rounds == list(range(1, len(rounds) + 1))
        assert max(printed) <= len(rounds) <= max(printed) + 1
        assert len(rounds) > committed
        committed = len(rounds)
