"""The device's encrypted store: one SQLite file, every record sealed with AES-256-GCM.

Everything a device keeps lives here: the user's events, the private parameters, the
privacy ledger (the accountant, written ahead of every release), the log of what left
the device, the received global model with its catalogue, the device's policy and its
pseudonymous key. Why SQLite with sealed records rather than SQLCipher: see
``docs/sdk.md`` (measured by ``simulations/benchmarks/sdk_store.py``).

Layout (``pollinate-store/1``)::

    meta(name, value)                      plaintext: format, KDF name/params/salt, key check
    records(seq, tbl, rid, nonce, ct)      one sealed record each
    head(id=1, nonce, ct)                  sealed: next seq, per table count and digest

* Each record is ``AES-256-GCM(nonce, plaintext, aad = format | table | record id | seq)``:
  a flipped byte fails its tag, and a record moved to another table, id or sequence
  number (a swap or reorder) fails too, because its AAD no longer matches.
* The head holds, per table, the number of records and a keyed multiset digest (sum mod
  2**256 of HMAC-SHA256 over each record's seq, table, id and GCM tag). Every write
  transaction updates it together with the records. A record deleted outside the store
  (the last one included), replayed from an older copy or added changes a count or a
  digest, and the read says so. Rolling back the *whole* file to an older copy is not
  detectable by the file alone (documented in docs/sdk.md).
* Durability: WAL journal, ``synchronous=FULL``; a call that writes returns after its
  transaction is committed to disk. A crash loses at most the transaction in flight,
  which never returned. ``secure_delete`` zeroes deleted records, and :meth:`forget`
  checkpoints the WAL so no copy of a forgotten record stays in it.
* Several processes may open one store (the app and the ClientApp a SuperNode starts):
  SQLite serialises writers, and each write re-reads the head inside its transaction.
"""

from __future__ import annotations

import hmac
import io
import json
import math
import os
import sqlite3
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.client.keys import (
    KdfParams,
    StoreError,
    StoreKeyError,
    check_key,
    key_from_passphrase,
)
from pollinate.client.policy import DevicePolicy
from pollinate.shared.catalogue import Catalogue

FORMAT = "pollinate-store/1"
#: The kinds of event an app may record.
EVENT_KINDS = ("view", "click", "like", "purchase", "rating", "dislike")
#: Kinds that say the user did not like the item (a negative signal).
NEGATIVE_KINDS = ("dislike",)
MAX_ITEM_LENGTH = 512
KEEP_PRIVATE_VERSIONS = 2
_KEY_CHECK = b"pollinate key check"
_MOD = 2**256

History = list[tuple[float, float, int]]
Arrays = dict[str, np.ndarray]

__all__ = [
    "EVENT_KINDS",
    "EncryptedStore",
    "Event",
    "GlobalModel",
    "StoreError",
    "StoreIntegrityError",
    "StoreKeyError",
]


class StoreIntegrityError(StoreError):
    """The store's bytes were altered or damaged: the message names what and where."""


@dataclass(frozen=True)
class Event:
    """One thing the user did: ``item`` is the app's own id of the item."""

    id: int
    item: str
    kind: str
    rating: float | None
    timestamp: float

    @property
    def positive(self) -> bool:
        return self.kind not in NEGATIVE_KINDS


@dataclass(frozen=True)
class GlobalModel:
    """The last global model the device received, with its catalogue."""

    round: int
    params: Arrays
    catalogue: Catalogue
    model_config: dict[str, Any]
    #: Derived arrays a scorer prepares once per model (not part of the model).
    cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def validate_event(
    item: object, kind: object, rating: object, timestamp: object
) -> tuple[str, str, float | None, float]:
    """The event's fields, checked; a clear error (and nothing stored) otherwise."""
    if not isinstance(item, str) or not item.strip():
        raise StoreError(f"item must be a non-empty string (the app's own item id), got {item!r}")
    if len(item) > MAX_ITEM_LENGTH:
        raise StoreError(f"item id is {len(item)} characters; at most {MAX_ITEM_LENGTH}")
    if kind not in EVENT_KINDS:
        raise StoreError(f"kind must be one of {list(EVENT_KINDS)}, got {kind!r}")
    value: float | None = None
    if rating is not None:
        if isinstance(rating, bool) or not isinstance(rating, (int, float)):
            raise StoreError(f"rating must be a number or None, got {rating!r}")
        value = float(rating)
        if not math.isfinite(value):
            raise StoreError(f"rating must be a finite number, got {rating!r}")
    if kind == "rating" and value is None:
        raise StoreError("an event of kind 'rating' needs a rating")
    if timestamp is None:
        ts = time.time()
    else:
        if isinstance(timestamp, bool) or not isinstance(timestamp, (int, float)):
            raise StoreError(f"timestamp must be seconds since the epoch, got {timestamp!r}")
        ts = float(timestamp)
        if not math.isfinite(ts) or ts < 0:
            raise StoreError(f"timestamp must be finite and >= 0, got {timestamp!r}")
    return item, str(kind), value, ts


def _npz(arrays: Mapping[str, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.asarray(v) for k, v in arrays.items()})  # type: ignore[arg-type]
    return buf.getvalue()


def _unnpz(blob: bytes) -> Arrays:
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _Keys:
    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        def sub(info: bytes) -> bytes:
            return HKDF(hashes.SHA256(), 32, salt=None, info=info).derive(key)

        self.aead = AESGCM(sub(b"pollinate-store/1 records"))
        self.mac_key = sub(b"pollinate-store/1 digest")

    def mac(self, seq: int, tbl: str, rid: str, tag: bytes) -> int:
        msg = b"%d\x00%s\x00%s\x00" % (seq, tbl.encode(), rid.encode()) + tag
        return int.from_bytes(hmac.digest(self.mac_key, msg, "sha256"), "big")


def _aad(tbl: str, rid: str, seq: int) -> bytes:
    return b"%s\x00%s\x00%s\x00%d" % (FORMAT.encode(), tbl.encode(), rid.encode(), seq)


class EncryptedStore:
    """A device's store (see the module docstring). Open with :meth:`open` or
    :meth:`open_with_passphrase`; it implements
    :class:`pollinate.client.local_state.LocalStateStore`."""

    durable = True

    def __init__(self, path: Path, conn: sqlite3.Connection, keys: _Keys) -> None:
        self.path = path
        self._conn = conn
        self._keys = keys
        self._lock = threading.RLock()
        #: Decrypted, verified rows per table, with the sealed head they were read under:
        #: any write (from any process) re-seals the head, which invalidates them.
        self._cache: dict[str, tuple[bytes, list[tuple[int, str, bytes]]]] = {}
        self._events: tuple[list[tuple[int, str, bytes]], list[Event]] | None = None

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, path: Path | str, key: bytes) -> EncryptedStore:
        """Open the store at ``path`` with a raw 32-byte ``key`` (creating it if absent),
        and verify every record."""
        return cls._open(Path(path), lambda meta: check_key(key), kdf=None)

    @classmethod
    def open_with_passphrase(
        cls, path: Path | str, passphrase: str, kdf: KdfParams | None = None
    ) -> EncryptedStore:
        """Open (or create) the store with a passphrase, stretched by Argon2id with the
        store's own salt and parameters (``kdf`` applies to a new store only)."""
        params = kdf or KdfParams()

        def derive(meta: dict[str, bytes]) -> bytes:
            if meta["kdf"] == b"raw":
                raise StoreKeyError(
                    f"{path} was created with a raw key (key file or keyring), not a passphrase"
                )
            try:
                stored = KdfParams.from_dict(json.loads(meta["kdf"]))
            except (ValueError, KeyError) as exc:
                raise StoreIntegrityError(
                    f"{path}: the key-derivation record is damaged ({exc})"
                ) from None
            return key_from_passphrase(passphrase, meta["salt"], stored)

        return cls._open(Path(path), derive, kdf=params)

    @classmethod
    def _open(cls, path: Path, derive: Any, kdf: KdfParams | None) -> EncryptedStore:
        import secrets

        existed = path.exists() and path.stat().st_size > 0
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                path, timeout=30.0, isolation_level=None, check_same_thread=False
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA secure_delete=ON")
            if existed and conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                existed = False  # a creation that a crash cut short left an empty database
            if existed:
                meta = cls._read_meta(path, conn)
            else:
                salt = secrets.token_bytes(16)
                meta = {
                    "format": FORMAT.encode(),
                    "kdf": json.dumps(kdf.to_dict()).encode() if kdf else b"raw",
                    "salt": salt,
                }
        except sqlite3.DatabaseError as exc:
            raise StoreIntegrityError(
                f"{path} is not a readable Pollinate store ({exc}): the file is damaged or "
                "is something else"
            ) from None
        keys = _Keys(derive(meta))
        store = cls(path, conn, keys)
        if existed:
            store._check_key(meta)
            store.verify()
        else:
            store._create(meta)
        return store

    @staticmethod
    def _read_meta(path: Path, conn: sqlite3.Connection) -> dict[str, bytes]:
        try:
            rows = conn.execute("SELECT name, value FROM meta").fetchall()
        except sqlite3.OperationalError:
            raise StoreError(f"{path} is not a Pollinate store (it has no meta table)") from None
        meta = {str(n): bytes(v) for n, v in rows}
        for name in ("format", "kdf", "salt", "check"):
            if name not in meta:
                raise StoreIntegrityError(f"{path}: the store's meta record {name!r} is missing")
        if meta["format"] != FORMAT.encode():
            raise StoreError(
                f"{path} is in format {meta['format'].decode(errors='replace')!r}; this "
                f"Pollinate reads {FORMAT!r}"
            )
        return meta

    def _check_key(self, meta: dict[str, bytes]) -> None:
        from cryptography.exceptions import InvalidTag

        blob = meta["check"]
        try:
            self._keys.aead.decrypt(blob[:12], blob[12:], b"keycheck")
        except InvalidTag:
            self._conn.close()
            raise StoreKeyError(
                f"{self.path}: wrong passphrase or key (the store's key check does not "
                "open with it). Nothing was read or changed"
            ) from None

    def _create(self, meta: dict[str, bytes]) -> None:
        import secrets

        nonce = os.urandom(12)
        check = nonce + self._keys.aead.encrypt(nonce, _KEY_CHECK, b"keycheck")
        with self._write() as tx:
            c = self._conn
            c.execute("CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB)")
            c.execute(
                "CREATE TABLE IF NOT EXISTS records (seq INTEGER PRIMARY KEY, "
                "tbl TEXT NOT NULL, rid TEXT NOT NULL, nonce BLOB NOT NULL, ct BLOB NOT NULL)"
            )
            c.execute("CREATE INDEX IF NOT EXISTS records_tbl ON records (tbl, rid)")
            c.execute(
                "CREATE TABLE IF NOT EXISTS head (id INTEGER PRIMARY KEY CHECK (id = 1), "
                "nonce BLOB NOT NULL, ct BLOB NOT NULL)"
            )
            for name, value in {**meta, "check": check}.items():
                c.execute("INSERT INTO meta VALUES (?, ?)", (name, value))
            tx.head = {"next_seq": 1, "tables": {}}
            tx.insert("identity", "device-key", json.dumps(secrets.randbits(63)).encode())

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> EncryptedStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ records
    def _seal(self, tbl: str, rid: str, seq: int, plaintext: bytes) -> tuple[bytes, bytes]:
        nonce = os.urandom(12)
        return nonce, self._keys.aead.encrypt(nonce, plaintext, _aad(tbl, rid, seq))

    def _read_head(self) -> dict[str, Any]:
        from cryptography.exceptions import InvalidTag

        row = self._conn.execute("SELECT nonce, ct FROM head WHERE id = 1").fetchone()
        if row is None:
            raise StoreIntegrityError(
                f"{self.path}: the store's head record is missing, so its records cannot be "
                "checked: the file was altered. Restore it from a backup"
            )
        try:
            plain = self._keys.aead.decrypt(bytes(row[0]), bytes(row[1]), b"head")
        except InvalidTag:
            raise StoreIntegrityError(
                f"{self.path}: the store's head record fails authentication: its bytes were "
                "altered. Restore the store from a backup"
            ) from None
        head: dict[str, Any] = json.loads(plain)
        return head

    def _rows(self, tbl: str | None) -> list[tuple[int, str, str, bytes, bytes]]:
        if tbl is None:
            sql, args = "SELECT seq, tbl, rid, nonce, ct FROM records ORDER BY seq", ()
        else:
            sql = "SELECT seq, tbl, rid, nonce, ct FROM records WHERE tbl = ? ORDER BY seq"
            args = (tbl,)  # type: ignore[assignment]
        return [
            (int(s), str(t), str(r), bytes(n), bytes(c))
            for s, t, r, n, c in self._conn.execute(sql, args)
        ]

    def _open_rows(
        self, head: dict[str, Any], tbl: str | None
    ) -> list[tuple[int, str, str, bytes]]:
        """Decrypt and check the records of ``tbl`` (all when None) against the head."""
        from cryptography.exceptions import InvalidTag

        out = []
        seen: dict[str, tuple[int, int]] = {}
        for seq, t, rid, nonce, ct in self._rows(tbl):
            if seq >= head["next_seq"]:
                raise StoreIntegrityError(
                    f"{self.path}: table {t!r}, record {rid!r} has sequence number {seq}, "
                    f"beyond the last one the store wrote ({head['next_seq'] - 1}): it was "
                    "added outside the store"
                )
            try:
                plain = self._keys.aead.decrypt(nonce, ct, _aad(t, rid, seq))
            except InvalidTag:
                raise StoreIntegrityError(
                    f"{self.path}: table {t!r}, record {rid!r} (sequence {seq}) fails "
                    "authentication: its bytes were altered, or it was moved to another "
                    "place (a reorder or swap). The store cannot be trusted; restore it "
                    "from a backup"
                ) from None
            n, digest = seen.get(t, (0, 0))
            seen[t] = (n + 1, (digest + self._keys.mac(seq, t, rid, ct[-16:])) % _MOD)
            out.append((seq, t, rid, plain))
        tables = head["tables"]
        names = set(tables) | set(seen) if tbl is None else {tbl}
        for t in sorted(names):
            want = tables.get(t, {"count": 0, "digest": "0"})
            n, digest = seen.get(t, (0, 0))
            if n != want["count"]:
                what = "deleted" if n < want["count"] else "added"
                raise StoreIntegrityError(
                    f"{self.path}: table {t!r} holds {n} records but the store wrote "
                    f"{want['count']}: records were {what} outside the store (the last "
                    "one included). Restore the store from a backup"
                )
            if digest != int(want["digest"], 16):
                raise StoreIntegrityError(
                    f"{self.path}: the records of table {t!r} are not the ones the store "
                    "wrote (a record was replaced by another, e.g. from an older copy). "
                    "Restore the store from a backup"
                )
        return out

    def _read(self, tbl: str) -> list[tuple[int, str, bytes]]:
        """The records of ``tbl``, decrypted and checked against the head (count and
        digest), or the rows read under the same sealed head."""
        with self._lock:
            try:
                self._conn.execute("BEGIN")
                try:
                    row = self._conn.execute("SELECT ct FROM head WHERE id = 1").fetchone()
                    sealed = b"" if row is None else bytes(row[0])
                    cached = self._cache.get(tbl)
                    if cached is not None and sealed and cached[0] == sealed:
                        return cached[1]
                    rows = self._open_rows(self._read_head(), tbl)
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                raise StoreIntegrityError(f"{self.path}: the database is damaged ({exc})") from None
            out = [(seq, rid, plain) for seq, _, rid, plain in rows]
            self._cache[tbl] = (sealed, out)
        return out

    def verify(self) -> None:
        """Check the whole file: SQLite's structure, every record, every table's count and
        digest. Raises :class:`StoreIntegrityError` naming what is wrong."""
        with self._lock:
            try:
                problems = self._conn.execute("PRAGMA quick_check").fetchall()
                if problems != [("ok",)]:
                    raise StoreIntegrityError(
                        f"{self.path}: the database file is damaged: "
                        + "; ".join(str(p[0]) for p in problems[:3])
                    )
                self._conn.execute("BEGIN")
                try:
                    self._open_rows(self._read_head(), None)
                finally:
                    self._conn.execute("COMMIT")
            except sqlite3.DatabaseError as exc:
                self._conn.close()
                raise StoreIntegrityError(
                    f"{self.path}: the database file is damaged ({exc})"
                ) from None

    def _write(self) -> _Transaction:
        return _Transaction(self)

    # ---------------------------------------------------------- LocalStateStore
    def load(self, before_round: int) -> Arrays | None:
        versions = [(int(rid[1:]), plain) for _, rid, plain in self._read("private")]
        older = [v for v in versions if v[0] < before_round]
        if not older:
            return None
        return _unnpz(max(older, key=lambda v: v[0])[1])

    def save(self, round_: int, params: Mapping[str, np.ndarray]) -> None:
        with self._write() as tx:
            rids = [rid for _, rid in tx.rids("private")]
            tx.delete("private", [f"r{round_}"])
            tx.insert("private", f"r{round_}", _npz(params))
            rounds = sorted({int(r[1:]) for r in rids} | {round_})
            tx.delete("private", [f"r{r}" for r in rounds[:-KEEP_PRIVATE_VERSIONS]])

    def ledger(self) -> list[Any]:
        """Every release this device made (its ledger events), in the order charged."""
        from pollinate.shared.privacy.ledger import LedgerEvent

        out = []
        for seq, _, plain in self._read("ledger"):
            try:
                out.append(LedgerEvent.from_mapping(json.loads(plain)))
            except (ValueError, TypeError) as exc:
                raise StoreIntegrityError(
                    f"{self.path}: ledger record {seq} is not a ledger event ({exc})"
                ) from None
        return out

    def load_history(self) -> History:
        return [(e.noise_multiplier, e.sample_rate, e.steps) for e in self.ledger()]

    def charge(self, event: Any) -> None:
        """Append one release to the ledger; committed to disk before this returns."""
        with self._write() as tx:
            tx.insert("ledger", f"{event.round}-{event.kind}", event.to_json().encode())

    # ---------------------------------------------------------- what left
    def record_release(
        self,
        round_: int,
        kind: str,
        arrays: Mapping[str, np.ndarray],
        metrics: Mapping[str, float] | None = None,
    ) -> None:
        """Log what one reply carried off the device: array names, shapes, dtypes and
        bytes (not the values) and the metrics it sent."""
        entry = {
            "round": int(round_),
            "kind": str(kind),
            "time": time.time(),
            "arrays": [
                {
                    "name": name,
                    "shape": list(np.shape(a)),
                    "dtype": str(np.asarray(a).dtype),
                    "bytes": int(np.asarray(a).nbytes),
                }
                for name, a in sorted(arrays.items())
            ],
            "metrics": {k: float(v) for k, v in sorted((metrics or {}).items())},
        }
        with self._write() as tx:
            tx.insert("release", f"{round_}-{kind}", json.dumps(entry).encode())

    def releases(self) -> list[dict[str, Any]]:
        return [json.loads(plain) for _, _, plain in self._read("release")]

    # ---------------------------------------------------------- events
    def add_event(
        self,
        item: str,
        kind: str = "view",
        rating: float | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Record one event (validated first: a bad one raises and stores nothing)."""
        item, kind, value, ts = validate_event(item, kind, rating, timestamp)
        with self._write() as tx:
            seq = tx.next_seq
            body = {"item": item, "kind": kind, "rating": value, "timestamp": ts}
            tx.insert("event", str(seq), json.dumps(body).encode())
        return seq

    def events(self) -> list[Event]:
        """Every event, in time order (ties in the order recorded)."""
        rows = self._read("event")
        if self._events is not None and self._events[0] is rows:
            return list(self._events[1])  # the same verified read: parse it once
        out = []
        for seq, _, plain in rows:
            raw = json.loads(plain)
            out.append(Event(seq, raw["item"], raw["kind"], raw["rating"], raw["timestamp"]))
        out.sort(key=lambda e: (e.timestamp, e.id))
        self._events = (rows, out)
        return list(out)

    def forget(self, item: str | None = None) -> int:
        """Delete the events of ``item`` (all events when None) and the private parameters
        trained on them; keep the ledger, the release log, the global model and the policy.
        Returns how many events were deleted."""
        events = self.events()
        doomed = [str(e.id) for e in events if item is None or e.item == item]
        with self._write() as tx:
            tx.delete("event", doomed)
            tx.delete("private", [rid for _, rid in tx.rids("private")])
        with self._lock:
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(doomed)

    # ---------------------------------------------------------- global model
    def save_global(
        self,
        round_: int,
        params: Mapping[str, np.ndarray],
        catalogue: Catalogue,
        model_config: Mapping[str, Any],
    ) -> None:
        """Keep the global model received in ``round_`` with its catalogue (replaces the
        previous one)."""
        head = {"round": int(round_), "model_config": dict(model_config)}
        arrays = {f"p:{k}": v for k, v in params.items()}
        arrays.update({f"c:{k}": v for k, v in catalogue.to_arrays().items()})
        arrays["head"] = np.array(json.dumps(head))
        with self._write() as tx:
            tx.delete("global", ["current"])
            tx.insert("global", "current", _npz(arrays))

    def global_version(self) -> int:
        """The sequence number of the stored global model (0 when none): changes whenever
        a new one is stored, without decrypting it."""
        with self._lock:
            row = self._conn.execute("SELECT max(seq) FROM records WHERE tbl = 'global'").fetchone()
        return int(row[0] or 0)

    def global_model(self) -> GlobalModel | None:
        rows = self._read("global")
        if not rows:
            return None
        arrays = _unnpz(rows[-1][2])
        head = json.loads(str(arrays.pop("head")))
        params = {k[2:]: v for k, v in arrays.items() if k.startswith("p:")}
        cat = Catalogue.from_arrays({k[2:]: v for k, v in arrays.items() if k.startswith("c:")})
        return GlobalModel(head["round"], params, cat, head["model_config"])

    def device_data(self, catalogue: Catalogue, task: str) -> Any:
        """The device's :class:`~pollinate.client.device_data.DeviceData` over
        ``catalogue`` (see :func:`pollinate.client.events.device_data_of`)."""
        from pollinate.client.events import device_data_of

        return device_data_of(self.events(), catalogue, task, user_id=str(self.device_key()))

    # ---------------------------------------------------------- policy, identity
    def policy(self) -> DevicePolicy:
        rows = self._read("policy")
        return DevicePolicy.from_json(rows[-1][2].decode()) if rows else DevicePolicy()

    def set_policy(self, policy: DevicePolicy) -> None:
        if not isinstance(policy, DevicePolicy):
            raise StoreError(f"policy must be a DevicePolicy, got {type(policy).__name__}")
        with self._write() as tx:
            tx.delete("policy", ["current"])
            tx.insert("policy", "current", policy.to_json().encode())

    def device_key(self) -> int:
        rows = self._read("identity")
        if not rows:
            raise StoreIntegrityError(f"{self.path}: the device key record is missing")
        return int(json.loads(rows[0][2]))

    def counts(self) -> dict[str, int]:
        """Records per table (for tests and diagnostics)."""
        with self._lock:
            head = self._read_head()
        return {t: v["count"] for t, v in head["tables"].items()}


class _Transaction:
    """One write transaction: ``BEGIN IMMEDIATE``, the head read inside it, inserts and
    deletes that keep the head's counts and digests, the head written, ``COMMIT``."""

    def __init__(self, store: EncryptedStore) -> None:
        self.store = store
        self.head: dict[str, Any] = {}

    @property
    def next_seq(self) -> int:
        return int(self.head["next_seq"])

    def __enter__(self) -> _Transaction:
        self.store._lock.acquire()
        try:
            self.store._conn.execute("BEGIN IMMEDIATE")
            exists = self.store._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'head'"
            ).fetchone()
            if exists:
                self.head = self.store._read_head()
        except BaseException:
            self._rollback()
            raise
        return self

    def _rollback(self) -> None:
        try:
            if self.store._conn.in_transaction:
                self.store._conn.execute("ROLLBACK")
        finally:
            self.store._lock.release()

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self._rollback()
            return
        try:
            nonce = os.urandom(12)
            ct = self.store._keys.aead.encrypt(nonce, json.dumps(self.head).encode(), b"head")
            self.store._conn.execute(
                "INSERT OR REPLACE INTO head (id, nonce, ct) VALUES (1, ?, ?)", (nonce, ct)
            )
            self.store._conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        self.store._lock.release()

    def _table(self, tbl: str) -> dict[str, Any]:
        tables: dict[str, dict[str, Any]] = self.head["tables"]
        return tables.setdefault(tbl, {"count": 0, "digest": "0"})

    def insert(self, tbl: str, rid: str, plaintext: bytes) -> int:
        seq = self.next_seq
        nonce, ct = self.store._seal(tbl, rid, seq, plaintext)
        self.store._conn.execute(
            "INSERT INTO records (seq, tbl, rid, nonce, ct) VALUES (?, ?, ?, ?, ?)",
            (seq, tbl, rid, nonce, ct),
        )
        t = self._table(tbl)
        t["count"] += 1
        t["digest"] = format(
            (int(t["digest"], 16) + self.store._keys.mac(seq, tbl, rid, ct[-16:])) % _MOD, "x"
        )
        self.head["next_seq"] = seq + 1
        return seq

    def rids(self, tbl: str) -> list[tuple[int, str]]:
        rows = self.store._conn.execute(
            "SELECT seq, rid FROM records WHERE tbl = ? ORDER BY seq", (tbl,)
        ).fetchall()
        return [(int(s), str(r)) for s, r in rows]

    def delete(self, tbl: str, rids: list[str]) -> None:
        if not rids:
            return
        wanted = set(rids)
        rows = self.store._conn.execute(
            "SELECT seq, rid, ct FROM records WHERE tbl = ?", (tbl,)
        ).fetchall()
        t = self._table(tbl)
        for seq, rid, ct in rows:
            if rid not in wanted:
                continue
            mac = self.store._keys.mac(int(seq), tbl, str(rid), bytes(ct)[-16:])
            t["digest"] = format((int(t["digest"], 16) - mac) % _MOD, "x")
            t["count"] -= 1
            self.store._conn.execute("DELETE FROM records WHERE seq = ?", (seq,))
