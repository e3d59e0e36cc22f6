"""Sign an audit report and the files it speaks for; verify them later.

What is signed is an in-toto Statement v1 (https://github.com/in-toto/attestation):

- ``subject``: one entry per file (the report, the released model, the ledger, ...), each
  ``{"name": <path relative to the signed directory>, "digest": {"sha256": <hex>}}``;
- ``predicateType``: :data:`PREDICATE_TYPE`, Pollinate's own;
- ``predicate``: a small summary the caller passes (verdict, ε per layer, ...).

The statement is wrapped in a DSSE envelope (https://github.com/secure-systems-lab/dsse):
``payloadType`` :data:`PAYLOAD_TYPE`, ``payload`` the base64 of the statement's JSON,
``signatures`` a list of ``{"keyid", "sig"}`` where ``sig`` is the base64 of an Ed25519
signature over :func:`pae` of the payload type and the payload bytes. ``keyid`` is the hex
SHA-256 of the raw 32-byte public key. Standard tooling that reads DSSE and in-toto can
read the envelope; :func:`verify` checks it without any of that tooling.

Keys are Ed25519 from ``cryptography``: :func:`generate_keypair` writes ``audit.key``
(PKCS8 PEM, unencrypted, mode 0600, never overwriting a key) and ``audit.pub``
(SubjectPublicKeyInfo PEM).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pollinate.audit.errors import AuditError

__all__ = [
    "ENVELOPE_NAME",
    "PAYLOAD_TYPE",
    "PREDICATE_TYPE",
    "PRIVATE_KEY_NAME",
    "PUBLIC_KEY_NAME",
    "STATEMENT_TYPE",
    "VerifyResult",
    "generate_keypair",
    "keyid",
    "load_private_key",
    "load_public_key",
    "pae",
    "sha256_file",
    "sign",
    "statement",
    "verify",
    "write_envelope",
]

STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://pollinate.dev/audit-report/v1"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
PRIVATE_KEY_NAME = "audit.key"
PUBLIC_KEY_NAME = "audit.pub"
ENVELOPE_NAME = "report.dsse.json"


# --- keys -----------------------------------------------------------------------------


def generate_keypair(out_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write a fresh Ed25519 key pair to ``out_dir``; return ``(private_path, public_path)``.

    ``audit.key`` is PKCS8 PEM, unencrypted, created with ``O_EXCL`` and mode 0600;
    ``audit.pub`` is SubjectPublicKeyInfo PEM. An existing key file is never overwritten:
    the call raises :class:`AuditError` and leaves both files alone.
    """
    directory = Path(out_dir)
    directory.mkdir(parents=True, exist_ok=True)
    private_path = directory / PRIVATE_KEY_NAME
    public_path = directory / PUBLIC_KEY_NAME
    for path in (private_path, public_path):
        if path.exists() or path.is_symlink():
            raise AuditError(
                f"{path} already exists; refusing to overwrite an audit key. Move it away "
                "or choose another --out folder"
            )
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write_exclusive(private_path, private_pem, 0o600)
    _write_exclusive(public_path, public_pem, 0o644)
    return private_path, public_path


def _write_exclusive(path: Path, data: bytes, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise AuditError(f"{path} already exists; refusing to overwrite an audit key") from None
    try:
        os.fchmod(fd, mode)  # the umask may only narrow the mode; make it exact
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
    finally:
        if fd >= 0:
            os.close(fd)


def load_private_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """Read an unencrypted PEM Ed25519 private key (as :func:`generate_keypair` writes)."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except FileNotFoundError:
        raise AuditError(
            f"private key {path} does not exist; make one with `pollinate audit keygen --out DIR`"
        ) from None
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path} is not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise AuditError(f"{path} holds a {type(key).__name__}; audit keys are Ed25519")
    return key


def load_public_key(path: str | os.PathLike[str]) -> Ed25519PublicKey:
    """Read a PEM (SubjectPublicKeyInfo) Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except FileNotFoundError:
        raise AuditError(f"public key {path} does not exist") from None
    except (ValueError, TypeError) as exc:
        raise AuditError(f"{path} is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise AuditError(f"{path} holds a {type(key).__name__}; audit keys are Ed25519")
    return key


def keyid(public_key: Ed25519PublicKey) -> str:
    """Hex SHA-256 of the raw 32-byte public key: the envelope's ``keyid``."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


# --- DSSE and in-toto -----------------------------------------------------------------


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding, the bytes that are signed.

    ``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, with LEN the ASCII decimal
    byte length (no leading zeros) and the type UTF-8 encoded.
    """
    type_bytes = payload_type.encode("utf-8")
    return b" ".join(
        [
            b"DSSEv1",
            str(len(type_bytes)).encode("ascii"),
            type_bytes,
            str(len(payload)).encode("ascii"),
            payload,
        ]
    )


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_subject_name(name: object) -> str:
    """A subject name must be a relative POSIX path inside the signed folder."""
    if not isinstance(name, str) or not name:
        raise AuditError(f"subject name must be a non-empty string, got {name!r}")
    pure = PurePosixPath(name)
    if "\\" in name or pure.is_absolute() or ".." in pure.parts or name != pure.as_posix():
        raise AuditError(
            f"subject name {name!r} must be a plain relative path inside the signed folder "
            "(no absolute path, '..', backslash or redundant separators)"
        )
    return name


def statement(subjects: list[tuple[str, Path]], predicate: dict[str, Any]) -> dict[str, Any]:
    """The in-toto Statement v1 over ``subjects``: ``(name, path)`` pairs, hashed now."""
    if not subjects:
        raise AuditError("nothing to sign: pass at least one (name, path) subject")
    names = [_check_subject_name(name) for name, _ in subjects]
    if len(set(names)) != len(names):
        raise AuditError(f"subject names must be unique, got {names}")
    entries = []
    for name, path in subjects:
        if not Path(path).is_file():
            raise AuditError(f"cannot sign subject {name!r}: {path} is not a file")
        entries.append({"name": name, "digest": {"sha256": sha256_file(path)}})
    return {
        "_type": STATEMENT_TYPE,
        "subject": entries,
        "predicateType": PREDICATE_TYPE,
        "predicate": predicate,
    }


def sign(
    subjects: list[tuple[str, Path]],
    predicate: dict[str, Any],
    private_key_path: str | os.PathLike[str],
) -> dict[str, Any]:
    """Hash ``subjects``, build the statement and return its signed DSSE envelope.

    Each subject is ``(name, path)``: ``name`` is recorded in the statement, and
    :func:`verify` later finds the file as ``base_dir / name``; ``path`` is where the file
    is now. ``predicate`` must be JSON-serialisable.
    """
    key = load_private_key(private_key_path)
    try:
        body = json.dumps(
            statement(subjects, predicate),
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
        ).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise AuditError(f"the predicate is not plain JSON: {exc}") from None
    signature = key.sign(pae(PAYLOAD_TYPE, body))
    return {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode("ascii"),
        "signatures": [
            {"keyid": keyid(key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}
        ],
    }


def write_envelope(envelope: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write an envelope as indented JSON (the file :func:`verify` reads)."""
    target = Path(path)
    target.write_text(json.dumps(envelope, indent=2) + "\n", encoding="utf-8")
    return target


# --- verification ---------------------------------------------------------------------


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify`: ``ok``, and a ``reason`` naming what failed (or passed).

    ``statement`` is the verified statement when the signature checked out, else None.
    """

    ok: bool
    reason: str
    statement: dict[str, Any] | None = None

    def __bool__(self) -> bool:
        return self.ok


def _b64decode(text: object) -> bytes:
    """Decode standard or URL-safe base64, padded or not (DSSE allows either)."""
    if not isinstance(text, str):
        raise ValueError("not a string")
    padded = text + "=" * (-len(text) % 4)
    if "-" in text or "_" in text:
        return base64.urlsafe_b64decode(padded.encode("ascii"))
    return base64.b64decode(padded.encode("ascii"), validate=True)


def verify(
    envelope_path: str | os.PathLike[str],
    public_key_path: str | os.PathLike[str],
    base_dir: str | os.PathLike[str],
) -> VerifyResult:
    """Check a DSSE envelope and every file its statement names.

    In order: the envelope parses; some signature verifies with the public key over the
    PAE of its payload type and payload ("wrong public key" when no signature carries this
    key's keyid, "bad signature" otherwise); the payload type and the statement type are
    the expected ones; every subject exists as ``base_dir / name`` and has the stated
    SHA-256 ("missing file X", "digest mismatch for X", all of them listed). Problems with
    the inputs are reported as a failed result, never raised.
    """
    try:
        public_key = load_public_key(public_key_path)
    except AuditError as exc:
        return VerifyResult(False, f"unusable public key: {exc}")
    try:
        envelope = json.loads(Path(envelope_path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return VerifyResult(False, f"missing envelope {envelope_path}")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return VerifyResult(False, f"malformed envelope {envelope_path}: {exc}")
    if not isinstance(envelope, dict):
        return VerifyResult(False, "malformed envelope: not a JSON object")
    payload_type = envelope.get("payloadType")
    signatures = envelope.get("signatures")
    if not isinstance(payload_type, str):
        return VerifyResult(False, "malformed envelope: payloadType is missing")
    try:
        body = _b64decode(envelope.get("payload"))
    except (ValueError, binascii.Error):
        return VerifyResult(False, "malformed envelope: payload is not base64")
    if not isinstance(signatures, list) or not signatures:
        return VerifyResult(False, "malformed envelope: no signatures")

    expected_keyid = keyid(public_key)
    message = pae(payload_type, body)
    verified = False
    keyid_seen = False
    for entry in signatures:
        if not isinstance(entry, dict):
            continue
        keyid_seen = keyid_seen or entry.get("keyid") == expected_keyid
        try:
            public_key.verify(_b64decode(entry.get("sig")), message)
        except (InvalidSignature, ValueError, binascii.Error):
            continue
        verified = True
        break
    if not verified:
        if not keyid_seen:
            found = sorted(
                str(entry.get("keyid")) for entry in signatures if isinstance(entry, dict)
            )
            return VerifyResult(
                False,
                f"wrong public key: the envelope is signed by keyid {', '.join(found)}, "
                f"the key given has keyid {expected_keyid}",
            )
        return VerifyResult(
            False, "bad signature: the envelope's signature does not match its payload"
        )

    if payload_type != PAYLOAD_TYPE:
        return VerifyResult(
            False, f"unexpected payload type {payload_type!r} (want {PAYLOAD_TYPE!r})"
        )
    try:
        signed = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return VerifyResult(False, f"malformed statement: {exc}")
    if not isinstance(signed, dict) or signed.get("_type") != STATEMENT_TYPE:
        got = signed.get("_type") if isinstance(signed, dict) else type(signed).__name__
        return VerifyResult(False, f"unexpected statement type {got!r} (want {STATEMENT_TYPE!r})")
    if signed.get("predicateType") != PREDICATE_TYPE:
        return VerifyResult(
            False,
            f"unexpected predicate type {signed.get('predicateType')!r} (want {PREDICATE_TYPE!r})",
        )
    subjects = signed.get("subject")
    if not isinstance(subjects, list) or not subjects:
        return VerifyResult(False, "malformed statement: no subjects")

    base = Path(base_dir)
    problems: list[str] = []
    for subject in subjects:
        if not isinstance(subject, dict):
            problems.append(f"malformed subject {subject!r}")
            continue
        try:
            name = _check_subject_name(subject.get("name"))
        except AuditError as exc:
            problems.append(str(exc))
            continue
        digest = subject.get("digest")
        want = digest.get("sha256") if isinstance(digest, dict) else None
        if not isinstance(want, str):
            problems.append(f"no sha256 digest for {name}")
            continue
        path = base / name
        if not path.is_file():
            problems.append(f"missing file {name}")
            continue
        got = sha256_file(path)
        if got != want.lower():
            problems.append(f"digest mismatch for {name}: signed {want}, found {got}")
    if problems:
        return VerifyResult(False, "; ".join(problems), signed)
    names = ", ".join(str(subject["name"]) for subject in subjects)
    return VerifyResult(True, f"signature by keyid {expected_keyid} checks out: {names}", signed)
