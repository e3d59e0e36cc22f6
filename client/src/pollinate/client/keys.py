"""Where the key of a device's encrypted store comes from.

Three sources, one result (a 32-byte AES-256 key):

* a passphrase, stretched by Argon2id (memory-hard, RFC 9106) with a per-store random
  salt that the store keeps beside its records (:func:`key_from_passphrase`);
* the platform keyring (:func:`key_from_keyring`, the ``keyring`` package: macOS
  Keychain, Windows Credential Locker, Secret Service on Linux), which holds a random key;
* a key file readable by its owner only (:func:`key_from_file`), for a process that
  cannot prompt, such as the ClientApp that a SuperNode starts once per message.

Nothing here logs or prints a key.
"""

from __future__ import annotations

import os
import secrets
import stat
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pollinate.client.local_state import StateStoreError

KEY_BYTES = 32


class StoreError(StateStoreError):
    """The device's store cannot do what was asked (bad input, not a store, no key)."""


class StoreKeyError(StoreError):
    """No usable key: a wrong passphrase or key, an unsafe or malformed key file, no keyring."""


@dataclass(frozen=True)
class KdfParams:
    """Argon2id parameters. The defaults are RFC 9106's second recommended option
    (64 MiB, 3 passes, 4 lanes): about 0.2 s on a small CPU."""

    memory_kib: int = 64 * 1024
    iterations: int = 3
    lanes: int = 4

    def __post_init__(self) -> None:
        if self.memory_kib < 8 * self.lanes or self.iterations < 1 or self.lanes < 1:
            raise StoreKeyError(f"invalid Argon2id parameters {self}")

    def to_dict(self) -> dict[str, Any]:
        return {"name": "argon2id", **asdict(self)}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> KdfParams:
        if raw.get("name") != "argon2id":
            raise StoreKeyError(f"unknown key derivation {raw.get('name')!r}; expected argon2id")
        return cls(int(raw["memory_kib"]), int(raw["iterations"]), int(raw["lanes"]))


def new_key() -> bytes:
    """A fresh random key from the operating system's CSPRNG."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes) or len(key) != KEY_BYTES:
        raise StoreKeyError(
            f"a store key is {KEY_BYTES} bytes; got "
            f"{len(key) if isinstance(key, bytes) else type(key).__name__}"
        )
    return key


def key_from_passphrase(passphrase: str, salt: bytes, params: KdfParams | None = None) -> bytes:
    """Stretch ``passphrase`` with Argon2id and ``salt`` (16+ random bytes per store)."""
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    if not isinstance(passphrase, str) or not passphrase:
        raise StoreKeyError("the passphrase must be a non-empty string")
    if len(salt) < 16:
        raise StoreKeyError(f"the salt must be at least 16 bytes, got {len(salt)}")
    p = params or KdfParams()
    kdf = Argon2id(
        salt=salt,
        length=KEY_BYTES,
        iterations=p.iterations,
        lanes=p.lanes,
        memory_cost=p.memory_kib,
    )
    return kdf.derive(passphrase.encode("utf-8"))


def write_key_file(path: Path | str) -> bytes:
    """Create ``path`` holding a new random key (hex), readable by its owner only (0600).
    Refuses to overwrite: a lost key is a lost store."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = new_key()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise StoreKeyError(
            f"{path} exists; a key file is never overwritten (its store would be lost). "
            "Use it with key_from_file, or choose another path"
        ) from None
    with os.fdopen(fd, "w") as fh:
        fh.write(key.hex() + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return key


def key_from_file(path: Path | str) -> bytes:
    """The key in ``path`` (64 hex characters). The file must be readable by its owner
    only: a key file that others can read protects nothing."""
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StoreKeyError(
            f"key file {path} does not exist; create one with pollinate.client.keys.write_key_file"
        ) from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreKeyError(
            f"key file {path} has mode {stat.S_IMODE(mode):04o}; others can read it. "
            f"Run: chmod 600 {path}"
        )
    text = path.read_text().strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise StoreKeyError(f"key file {path} does not hold a hex key") from None
    if len(key) != KEY_BYTES:
        raise StoreKeyError(
            f"key file {path} holds {len(key)} bytes; a store key is {KEY_BYTES} bytes"
        )
    return key


def key_from_keyring(service: str, user: str, *, create: bool = True) -> bytes:
    """The key kept in the platform keyring under (``service``, ``user``); a new random
    key is created and stored there when absent and ``create`` is true."""
    try:
        import keyring
        from keyring.errors import KeyringError, NoKeyringError
    except ImportError:
        raise StoreKeyError("the keyring package is not installed: pip install keyring") from None
    try:
        text = keyring.get_password(service, user)
        if text is None:
            if not create:
                raise StoreKeyError(f"no key in the keyring for service {service!r}, user {user!r}")
            key = new_key()
            keyring.set_password(service, user, key.hex())
            text = keyring.get_password(service, user)
            if text != key.hex():
                raise StoreKeyError(
                    f"the keyring backend {keyring.get_keyring()!r} did not keep the key"
                )
    except NoKeyringError as exc:
        raise StoreKeyError(
            f"no platform keyring is available ({exc}); use a passphrase or a key file"
        ) from None
    except KeyringError as exc:
        raise StoreKeyError(f"the keyring refused: {exc}") from None
    try:
        return check_key(bytes.fromhex(text))
    except ValueError:
        raise StoreKeyError(
            f"the keyring entry ({service!r}, {user!r}) is not a Pollinate key"
        ) from None
