"""The device store, two ways, side by side: SQLCipher (``sqlcipher3-binary``) against
SQLite with AES-256-GCM sealed records (:mod:`pollinate.client.store`).

Same workload for both, in one run: create/open with a raw key and with a passphrase,
record N events with one durable commit each (WAL, synchronous=FULL), read them all
back, store and load a 10,000 x 64 float32 global model, the file size, and what each
says when one byte of an event is flipped, when the last event is deleted, and when the
key is wrong.

    .venv/bin/python simulations/benchmarks/sdk_store.py [--events 1000]

SQLCipher is optional (``pip install sqlcipher3-binary``); without it only the sealed
store runs.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.client.keys import new_key
from pollinate.client.store import EncryptedStore


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def _model_blob() -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    np.savez(buf, q=rng.normal(size=(10_000, 64)).astype(np.float32))
    return buf.getvalue()


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ sealed records
def sealed(root: Path, n: int) -> dict[str, Any]:
    key = new_key()
    path = root / "sealed.db"
    out: dict[str, Any] = {}
    out["create_s"], store = _timed(lambda: EncryptedStore.open(path, key))
    t = time.perf_counter()
    for i in range(n):
        store.add_event(f"tt{i:07d}", "rating", float(i % 5 + 1), 1e9 + i)
    out["record_ms_per_event"] = (time.perf_counter() - t) / n * 1e3
    out["read_all_ms"], events = _timed(store.events)
    out["read_all_ms"] *= 1e3
    assert len(events) == n
    rng = np.random.default_rng(0)
    q = rng.normal(size=(10_000, 64)).astype(np.float32)
    from pollinate.shared.catalogue import Catalogue

    cat = Catalogue(item_ids=np.array([f"tt{i:07d}" for i in range(10_000)]))
    out["save_model_ms"], _ = _timed(lambda: store.save_global(1, {"q": q}, cat, {"model": "mf"}))
    out["save_model_ms"] *= 1e3
    out["load_model_ms"], _ = _timed(store.global_model)
    out["load_model_ms"] *= 1e3
    store.close()
    out["reopen_verify_ms"], s2 = _timed(lambda: EncryptedStore.open(path, key))
    out["reopen_verify_ms"] *= 1e3
    s2.close()
    out["passphrase_open_s"], s3 = _timed(
        lambda: EncryptedStore.open_with_passphrase(root / "pw.db", "a passphrase")
    )
    s3.close()
    out["file_bytes"] = path.stat().st_size
    out["errors"] = _sealed_errors(root, path, key)
    return out


def _sealed_errors(root: Path, path: Path, key: bytes) -> dict[str, str]:
    errors: dict[str, str] = {}

    def attempt(name: str, p: Path, k: bytes) -> None:
        try:
            EncryptedStore.open(p, k).close()
            errors[name] = "NOT DETECTED"
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {str(exc).replace(str(p), '<store>')}"

    attempt("wrong key", path, new_key())
    flipped = root / "flip.db"
    shutil.copy(path, flipped)
    conn = sqlite3.connect(flipped)
    seq, ct = conn.execute(
        "SELECT seq, ct FROM records WHERE tbl='event' LIMIT 1 OFFSET 5"
    ).fetchone()
    ct = bytearray(ct)
    ct[3] ^= 1
    conn.execute("UPDATE records SET ct = ? WHERE seq = ?", (bytes(ct), seq))
    conn.commit()
    conn.close()
    attempt("flipped byte in an event", flipped, key)
    deleted = root / "del.db"
    shutil.copy(path, deleted)
    conn = sqlite3.connect(deleted)
    conn.execute("DELETE FROM records WHERE seq = (SELECT max(seq) FROM records WHERE tbl='event')")
    conn.commit()
    conn.close()
    attempt("last event deleted", deleted, key)
    return errors


# ------------------------------------------------------------------ SQLCipher
def sqlcipher(root: Path, n: int) -> dict[str, Any] | None:
    try:
        import sqlcipher3
    except ImportError:
        return None
    key = new_key()
    path = root / "cipher.db"

    def connect(k: bytes, p: Path = path, passphrase: str | None = None) -> Any:
        conn = sqlcipher3.connect(str(p), isolation_level=None)
        if passphrase is None:
            conn.execute(f"PRAGMA key = \"x'{k.hex()}'\"")
        else:
            conn.execute(f"PRAGMA key = '{passphrase}'")  # PBKDF2-HMAC-SHA512, 256,000 rounds
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA secure_delete=ON")
        return conn

    out: dict[str, Any] = {}

    def create() -> Any:
        conn = connect(key)
        conn.execute("CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, body TEXT)")
        conn.execute("CREATE TABLE IF NOT EXISTS blobs (name TEXT PRIMARY KEY, value BLOB)")
        return conn

    out["create_s"], conn = _timed(create)
    t = time.perf_counter()
    for i in range(n):
        body = {"item": f"tt{i:07d}", "kind": "rating", "rating": float(i % 5 + 1),
                "timestamp": 1e9 + i}  # fmt: skip
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT INTO events (body) VALUES (?)", (json.dumps(body),))
        conn.execute("COMMIT")
    out["record_ms_per_event"] = (time.perf_counter() - t) / n * 1e3
    t = time.perf_counter()
    rows = [json.loads(b) for (b,) in conn.execute("SELECT body FROM events ORDER BY id")]
    out["read_all_ms"] = (time.perf_counter() - t) * 1e3
    assert len(rows) == n
    blob = _model_blob()

    def save() -> None:
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("INSERT OR REPLACE INTO blobs VALUES ('global', ?)", (blob,))
        conn.execute("COMMIT")

    out["save_model_ms"], _ = _timed(save)
    out["save_model_ms"] *= 1e3

    def load() -> Any:
        (b,) = conn.execute("SELECT value FROM blobs WHERE name='global'").fetchone()
        with np.load(io.BytesIO(b)) as z:
            return z["q"]

    out["load_model_ms"], _ = _timed(load)
    out["load_model_ms"] *= 1e3
    conn.close()

    def reopen() -> None:
        c = connect(key)
        assert c.execute("PRAGMA cipher_integrity_check").fetchall() == []
        c.execute("SELECT count(*) FROM events").fetchone()
        c.close()

    out["reopen_verify_ms"], _ = _timed(reopen)
    out["reopen_verify_ms"] *= 1e3

    def passphrase_open() -> None:
        c = connect(b"", root / "cpw.db", passphrase="a passphrase")
        c.execute("CREATE TABLE t (x)")
        c.close()

    out["passphrase_open_s"], _ = _timed(passphrase_open)
    out["file_bytes"] = path.stat().st_size
    errors: dict[str, str] = {}

    def attempt(name: str, p: Path, k: bytes) -> None:
        try:
            c = connect(k, p)
            bad = c.execute("PRAGMA cipher_integrity_check").fetchall()
            got = c.execute("SELECT count(*) FROM events").fetchone()[0]
            c.close()
            errors[name] = f"NOT DETECTED (opens; {got} events; integrity check {bad[:2]})"
        except Exception as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"

    attempt("wrong key", path, new_key())
    flipped = root / "cflip.db"
    shutil.copy(path, flipped)
    # a byte inside the last page (where the latest events are)
    _flip(flipped, path.stat().st_size - 1000)
    attempt("flipped byte in an event", flipped, key)
    # without the key, an attacker cannot delete a row; the nearest thing is dropping
    # the last page of the file
    cut = root / "ccut.db"
    data = path.read_bytes()
    cut.write_bytes(data[: len(data) - 4096])
    attempt("last page cut", cut, key)
    out["errors"] = errors
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1000)
    args = parser.parse_args()
    random.seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "a").mkdir()
        (root / "b").mkdir()
        results = {
            "machine": f"{platform.machine()}, {platform.python_version()}",
            "events": args.events,
            "sealed (sqlite3 + AES-256-GCM records)": sealed(root / "a", args.events),
            "sqlcipher": sqlcipher(root / "b", args.events),
        }
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
