"""The encrypted store: round trips, the LocalStateStore contract, tamper detection with
errors that name what is wrong, keys, and no committed write lost to a SIGKILL."""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pollinate.client.keys import (
    KdfParams,
    StoreError,
    StoreKeyError,
    key_from_file,
    key_from_keyring,
    key_from_passphrase,
    new_key,
    write_key_file,
)
from pollinate.client.local_state import DiskStateStore, StateStoreError
from pollinate.client.policy import DevicePolicy
from pollinate.client.store import EncryptedStore, StoreIntegrityError
from pollinate.shared.catalogue import Catalogue
from pollinate.shared.privacy.ledger import LedgerEvent, local_event

FAST_KDF = KdfParams(memory_kib=1024, iterations=1, lanes=1)


def _event(round_: int, eps: float) -> LedgerEvent:
    return local_event(
        round_=round_, device="3", release=(1.1, 0.05, 20), clip_norm=0.5, delta=1e-5,
        accountant="pld", epsilon=eps,
    )  # fmt: skip


def _filled(path: Path, key: bytes) -> None:
    with EncryptedStore.open(path, key) as s:
        for i in range(4):
            s.add_event(f"item-{i}", rating=float(i + 1), timestamp=100.0 + i)
        s.charge(_event(1, 0.5))


def _sql(path: Path, statement: str, *args: object) -> None:
    conn = sqlite3.connect(path)
    conn.execute(statement, args)
    conn.commit()
    conn.close()


def test_round_trip_of_every_kind_of_record(store_path: Path, key: bytes) -> None:
    cat = Catalogue(item_ids=np.array(["a", "b"]), popularity=np.array([2.0, 1.0]))
    params = {"item_factors.weight": np.arange(8, dtype=np.float32).reshape(2, 4)}
    policy = DevicePolicy(local_dp=True, noise_multiplier=1.2, evaluation="noised")
    with EncryptedStore.open(store_path, key) as s:
        assert s.add_event("a", "rating", 4.5, 10.0) < s.add_event("b", timestamp=5.0)
        s.save(3, {"user_factors.weight": np.ones((1, 4), np.float32)})
        s.charge(_event(3, 0.7))
        s.record_release(3, "train", params, {"local-epsilon": 0.7})
        s.save_global(3, params, cat, {"model": "mf", "task": "ranking"})
        s.set_policy(policy)
        key_before = s.device_key()
    with EncryptedStore.open(store_path, key) as s:
        assert [(e.item, e.kind, e.rating) for e in s.events()] == [
            ("b", "view", None),
            ("a", "rating", 4.5),
        ]  # fmt: skip   (time order)
        private = s.load(4)
        assert private is not None
        np.testing.assert_array_equal(private["user_factors.weight"], np.ones((1, 4)))
        assert s.ledger() == [_event(3, 0.7)]
        assert s.releases()[0]["arrays"] == [
            {"name": "item_factors.weight", "shape": [2, 4], "dtype": "float32", "bytes": 32}
        ]
        g = s.global_model()
        assert g is not None and g.round == 3 and g.model_config["model"] == "mf"
        np.testing.assert_array_equal(
            g.params["item_factors.weight"], params["item_factors.weight"]
        )
        assert list(g.catalogue.item_ids) == ["a", "b"]
        assert s.policy() == policy
        assert s.device_key() == key_before
        assert 0 < key_before < 2**63


def test_nothing_is_stored_in_plaintext(store_path: Path, key: bytes) -> None:
    with EncryptedStore.open(store_path, key) as s:
        s.add_event("a-very-secret-item-id", "rating", 4.5)
        s.charge(_event(1, 0.5))
    raw = b"".join(p.read_bytes() for p in store_path.parent.iterdir())
    assert b"a-very-secret-item-id" not in raw
    assert b"noise_multiplier" not in raw


def test_private_parameters_follow_the_disk_store_semantics(
    store_path: Path, key: bytes, tmp_path: Path
) -> None:
    disk = DiskStateStore(tmp_path / "disk", "d")
    with EncryptedStore.open(store_path, key) as s:
        assert s.durable and s.load(5) is None
        for r in (1, 2, 3):
            for st in (s, disk):
                st.save(r, {"w": np.full((1, 2), float(r))})
        for before in (1, 2, 3, 4, 9):
            ours, theirs = s.load(before), disk.load(before)
            assert (ours is None) == (theirs is None), before
            if ours is not None and theirs is not None:
                np.testing.assert_array_equal(ours["w"], theirs["w"])
        assert s.counts()["private"] == 2  # keeps the newest two, like DiskStateStore
        s.save(3, {"w": np.full((1, 2), 30.0)})  # a re-run round replaces its version
        assert s.load(4)["w"][0, 0] == 30.0  # type: ignore[index]


def test_the_ledger_is_the_disk_stores_format(store_path: Path, key: bytes, tmp_path: Path) -> None:
    disk = DiskStateStore(tmp_path / "disk", "d")
    events = [_event(1, 0.3), _event(2, 0.5), _event(2, 0.6)]
    with EncryptedStore.open(store_path, key) as s:
        for e in events:
            s.charge(e)
            disk.charge(e)
        assert s.ledger() == disk.events() == events
        assert s.load_history() == disk.load_history() == [(1.1, 0.05, 20)] * 3
        stored = [json.loads(e.to_json()) for e in s.ledger()]
        assert stored == [json.loads(line) for line in disk.ledger_path.read_text().splitlines()]


def test_a_wrong_key_or_passphrase_is_named_and_changes_nothing(
    store_path: Path, key: bytes
) -> None:
    _filled(store_path, key)
    before = store_path.read_bytes()
    with pytest.raises(StoreKeyError, match="wrong passphrase or key"):
        EncryptedStore.open(store_path, new_key())
    assert store_path.read_bytes() == before
    pw = store_path.parent / "pw.db"
    EncryptedStore.open_with_passphrase(pw, "correct horse", FAST_KDF).close()
    with pytest.raises(StoreKeyError, match="wrong passphrase"):
        EncryptedStore.open_with_passphrase(pw, "Correct horse")
    with EncryptedStore.open_with_passphrase(pw, "correct horse") as s:  # params kept in file
        assert s.events() == []
    with pytest.raises(StoreKeyError, match="created with a raw key"):
        EncryptedStore.open_with_passphrase(store_path, "x")


def test_a_flipped_byte_in_a_record_names_the_table_and_record(
    store_path: Path, key: bytes
) -> None:
    _filled(store_path, key)
    conn = sqlite3.connect(store_path)
    seq, ct = conn.execute(
        "SELECT seq, ct FROM records WHERE tbl = 'event' ORDER BY seq LIMIT 1 OFFSET 2"
    ).fetchone()
    flipped = bytearray(ct)
    flipped[5] ^= 0x01
    conn.execute("UPDATE records SET ct = ? WHERE seq = ?", (bytes(flipped), seq))
    conn.commit()
    conn.close()
    with pytest.raises(StoreIntegrityError, match=rf"table 'event', record '{seq}'.*altered"):
        EncryptedStore.open(store_path, key)


def test_a_flipped_byte_anywhere_in_the_file_is_an_error_not_silence(
    tmp_path: Path, key: bytes
) -> None:
    """Flip one byte at 40 random places of the file: every open either fails with a
    store error or returns exactly the same data (the byte was in unused space)."""
    base = tmp_path / "base.db"
    _filled(base, key)  # closed: the WAL is checkpointed into the file
    original = base.read_bytes()
    with EncryptedStore.open(base, key) as s:
        want = (s.events(), s.ledger())
    rng = random.Random(7)
    detected = 0
    for n in range(40):
        path = tmp_path / f"f{n}.db"
        data = bytearray(original)
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        path.write_bytes(bytes(data))
        try:
            with EncryptedStore.open(path, key) as s:
                assert (s.events(), s.ledger()) == want
        except StoreError as exc:
            detected += 1
            assert str(path) in str(exc)
    assert detected > 0


def test_deleting_the_last_record_is_detected(store_path: Path, key: bytes) -> None:
    _filled(store_path, key)
    _sql(store_path, "DELETE FROM records WHERE seq = (SELECT max(seq) FROM records)")
    with pytest.raises(
        StoreIntegrityError, match="table 'ledger' holds 0 records but the store wrote 1"
    ):
        EncryptedStore.open(store_path, key)


def test_deleting_a_middle_event_is_detected(store_path: Path, key: bytes) -> None:
    _filled(store_path, key)
    _sql(
        store_path,
        "DELETE FROM records WHERE seq = (SELECT min(seq) FROM records WHERE tbl = 'event')",
    )
    with pytest.raises(StoreIntegrityError, match=r"table 'event' holds 3 records .* deleted"):
        EncryptedStore.open(store_path, key)


def test_swapping_or_reordering_records_is_detected(tmp_path: Path, key: bytes) -> None:
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    _filled(a, key)
    _filled(b, key)
    # swap the sealed contents of two events
    conn = sqlite3.connect(a)
    rows = conn.execute(
        "SELECT seq, nonce, ct FROM records WHERE tbl='event' ORDER BY seq"
    ).fetchall()
    (s1, n1, c1), (s2, n2, c2) = rows[0], rows[1]
    conn.execute("UPDATE records SET nonce = ?, ct = ? WHERE seq = ?", (n2, c2, s1))
    conn.execute("UPDATE records SET nonce = ?, ct = ? WHERE seq = ?", (n1, c1, s2))
    conn.commit()
    conn.close()
    with pytest.raises(StoreIntegrityError, match="moved to another place"):
        EncryptedStore.open(a, key)
    # renumber (reorder) two events
    conn = sqlite3.connect(b)
    conn.execute("UPDATE records SET seq = -1 WHERE seq = ?", (s1,))
    conn.execute("UPDATE records SET seq = ? WHERE seq = ?", (s1, s2))
    conn.execute("UPDATE records SET seq = ? WHERE seq = -1", (s2,))
    conn.commit()
    conn.close()
    with pytest.raises(StoreIntegrityError, match="fails authentication"):
        EncryptedStore.open(b, key)


def test_a_record_replayed_from_an_older_copy_is_detected(store_path: Path, key: bytes) -> None:
    with EncryptedStore.open(store_path, key) as s:
        s.add_event("kept")
        s.add_event("forgotten")
    conn = sqlite3.connect(store_path)
    old = conn.execute("SELECT * FROM records WHERE tbl='event' ORDER BY seq DESC").fetchone()
    conn.close()
    with EncryptedStore.open(store_path, key) as s:
        assert s.forget("forgotten") == 1
        s.add_event("later")
    _sql(store_path, "INSERT INTO records VALUES (?, ?, ?, ?, ?)", *old)
    with pytest.raises(StoreIntegrityError, match=r"table 'event' holds 3 records .* added"):
        EncryptedStore.open(store_path, key)
    # the same, with the later record removed so the count matches: the digest catches it
    _sql(
        store_path,
        "DELETE FROM records WHERE seq = (SELECT max(seq) FROM records WHERE tbl='event')",
    )
    with pytest.raises(StoreIntegrityError, match="not the ones the store wrote"):
        EncryptedStore.open(store_path, key)


def test_a_missing_head_and_a_foreign_file_are_named(tmp_path: Path, key: bytes) -> None:
    path = tmp_path / "s.db"
    _filled(path, key)
    _sql(path, "DELETE FROM head")
    with pytest.raises(StoreIntegrityError, match="head record is missing"):
        EncryptedStore.open(path, key)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not a database at all" * 100)
    with pytest.raises(StoreIntegrityError, match="not a readable Pollinate store"):
        EncryptedStore.open(junk, key)
    other = tmp_path / "other.db"
    _sql(other, "CREATE TABLE t (x)")
    with pytest.raises(StoreError, match="not a Pollinate store"):
        EncryptedStore.open(other, key)


def test_store_errors_are_state_store_errors_so_the_client_app_refuses() -> None:
    assert issubclass(StoreIntegrityError, StateStoreError)
    assert issubclass(StoreKeyError, StateStoreError)


def test_bad_events_raise_and_store_nothing(store_path: Path, key: bytes) -> None:
    with EncryptedStore.open(store_path, key) as s:
        for kwargs, match in [
            ({"item": "x", "rating": float("nan")}, "finite"),
            ({"item": "x", "rating": float("inf")}, "finite"),
            ({"item": "x", "kind": "watched"}, "kind must be one of"),
            ({"item": ""}, "non-empty string"),
            ({"item": 42}, "non-empty string"),
            ({"item": "x", "kind": "rating"}, "needs a rating"),
            ({"item": "x", "rating": "5"}, "number"),
            ({"item": "x", "timestamp": -1.0}, "timestamp"),
        ]:
            with pytest.raises(StoreError, match=match):
                s.add_event(**kwargs)  # type: ignore[arg-type]
        assert s.events() == [] and "event" not in s.counts()


def test_forget_deletes_events_and_private_parameters_and_keeps_the_ledger(
    store_path: Path, key: bytes
) -> None:
    _filled(store_path, key)
    with EncryptedStore.open(store_path, key) as s:
        s.add_event("item-1", "like")
        s.save(1, {"w": np.ones(2)})
        assert s.forget("item-1") == 2
        assert [e.item for e in s.events()] == ["item-0", "item-2", "item-3"]
        assert s.load(9) is None
        assert len(s.ledger()) == 1
        assert s.forget() == 3 and s.events() == []
        assert len(s.ledger()) == 1
    assert b"item-1" not in store_path.read_bytes()


def test_key_file_must_be_private_and_is_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "device.key"
    key = write_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert key_from_file(path) == key
    with pytest.raises(StoreKeyError, match="never overwritten"):
        write_key_file(path)
    path.chmod(0o644)
    with pytest.raises(StoreKeyError, match="chmod 600"):
        key_from_file(path)
    with pytest.raises(StoreKeyError, match="does not exist"):
        key_from_file(tmp_path / "nope")


def test_passphrase_kdf_is_argon2id_and_salted() -> None:
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    salt = bytes(range(16))
    key = key_from_passphrase("pw", salt, FAST_KDF)
    ref = Argon2id(salt=salt, length=32, iterations=1, lanes=1, memory_cost=1024).derive(b"pw")
    assert key == ref
    assert key_from_passphrase("pw", bytes(16), FAST_KDF) != key


def test_keyring_key_is_created_once_and_reused(tmp_path: Path) -> None:
    keyring = pytest.importorskip("keyring")
    alt = pytest.importorskip("keyrings.alt.file")
    backend = alt.PlaintextKeyring()
    backend.file_path = str(tmp_path / "keyring.cfg")
    previous = keyring.get_keyring()
    keyring.set_keyring(backend)
    try:
        with pytest.raises(StoreKeyError, match="no key in the keyring"):
            key_from_keyring("pollinate-test", "alice", create=False)
        first = key_from_keyring("pollinate-test", "alice")
        assert key_from_keyring("pollinate-test", "alice") == first
        assert key_from_keyring("pollinate-test", "bob") != first
        with EncryptedStore.open(tmp_path / "k.db", first) as s:
            s.add_event("x")
        with EncryptedStore.open(
            tmp_path / "k.db", key_from_keyring("pollinate-test", "alice")
        ) as s:
            assert len(s.events()) == 1
    finally:
        keyring.set_keyring(previous)


def test_two_processes_writing_one_store_lose_nothing(store_path: Path, key: bytes) -> None:
    EncryptedStore.open(store_path, key).close()
    code = (
        "import sys; from pollinate.client.store import EncryptedStore as E;"
        "s = E.open(sys.argv[1], bytes.fromhex(sys.argv[2]));"
        "[s.add_event(f'{sys.argv[3]}-{i}') for i in range(40)]"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(store_path), key.hex(), tag])
        for tag in ("a", "b")
    ]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    with EncryptedStore.open(store_path, key) as s:
        assert len(s.events()) == 80


WRITER = Path(__file__).with_name("crash_writer.py")


def _kill_cycles(store_path: Path, key: bytes, cycles: int, seed: int) -> int:
    rng = random.Random(seed)
    EncryptedStore.open(store_path, key).close()
    start = 0
    killed_with_writes = 0
    for _ in range(cycles):
        proc = subprocess.Popen(
            [sys.executable, str(WRITER), str(store_path), key.hex(), str(start)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        committed = [int(line) for line in proc.stdout.read().split() if line.strip().isdigit()]
        killed_with_writes += bool(committed)
        with EncryptedStore.open(store_path, key) as s:  # opens, and verifies everything
            items = [e.item for e in s.events()]
            assert items == [f"item-{i}" for i in range(len(items))]  # no gap, no loss
            for i in committed:
                assert f"item-{i}" in items
            rounds = [e.round for e in s.ledger()]
            assert rounds == sorted(set(rounds)) and all(r % 3 == 0 for r in rounds)
            assert all(f"item-{r}" in items for r in rounds)  # charged after its event
            charged = [i for i in committed if i % 3 == 0]
            assert set(charged) <= set(rounds)
            if charged:
                latest = s.load(before_round=10**9)
                assert latest is not None
                assert latest["user_factors.weight"][0, 0] >= max(charged)
            start = len(items)
    return killed_with_writes


def test_a_writer_killed_at_random_points_loses_nothing_committed(
    store_path: Path, key: bytes
) -> None:
    assert _kill_cycles(store_path, key, cycles=4, seed=1) >= 1


@pytest.mark.slow
def test_a_writer_killed_many_times_loses_nothing_committed(store_path: Path, key: bytes) -> None:
    assert _kill_cycles(store_path, key, cycles=12, seed=2) >= 6


def test_a_creation_cut_short_by_a_crash_is_created_again(store_path: Path, key: bytes) -> None:
    conn = sqlite3.connect(store_path)
    conn.execute("PRAGMA journal_mode=WAL")  # writes the header, then the crash
    conn.close()
    assert store_path.stat().st_size > 0
    with EncryptedStore.open(store_path, key) as s:
        s.add_event("x")
    with EncryptedStore.open(store_path, key) as s:
        assert [e.item for e in s.events()] == ["x"]
