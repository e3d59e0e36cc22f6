"""Audit keys, the DSSE envelope and its verification: tampering must be caught and named."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pollinate.audit.errors import AuditError
from pollinate.audit.signing import (
    ENVELOPE_NAME,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    STATEMENT_TYPE,
    generate_keypair,
    keyid,
    load_public_key,
    pae,
    sha256_file,
    sign,
    verify,
    write_envelope,
)

LEDGER = [
    {"layer": "user", "noise_multiplier": 0.5, "sampling_rate": 0.2, "steps": 30},
    {"layer": "local", "noise_multiplier": 1.1, "sampling_rate": 0.05, "steps": 400},
]


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys")


@pytest.fixture
def signed(tmp_path: Path, keys: tuple[Path, Path]) -> Path:
    """A run-like folder whose report, model and ledger are signed into report.dsse.json."""
    run = tmp_path / "run"
    (run / "release").mkdir(parents=True)
    (run / "report.json").write_text(json.dumps({"verdict": "pass", "epsilon": 8.0}))
    (run / "release" / "model.npz").write_bytes(os.urandom(4096))
    (run / "ledger.jsonl").write_text("".join(json.dumps(line) + "\n" for line in LEDGER))
    subjects = [(name, run / name) for name in ("report.json", "release/model.npz", "ledger.jsonl")]
    envelope = sign(subjects, {"verdict": "pass", "epsilon": {"user": 8.0}}, keys[0])
    write_envelope(envelope, run / ENVELOPE_NAME)
    return run


def check(run: Path, public: Path) -> tuple[bool, str]:
    result = verify(run / ENVELOPE_NAME, public, run)
    return result.ok, result.reason


# --- keys -----------------------------------------------------------------------------


def test_keygen_writes_a_0600_pkcs8_key_and_a_spki_public_key(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path / "k")
    assert (private.name, public.name) == ("audit.key", "audit.pub")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")  # SPKI
    assert isinstance(load_public_key(public), Ed25519PublicKey)


def test_keygen_never_overwrites_a_key(tmp_path: Path) -> None:
    private, public = generate_keypair(tmp_path)
    before = (private.read_bytes(), public.read_bytes())
    with pytest.raises(AuditError, match="already exists"):
        generate_keypair(tmp_path)
    public.unlink()  # a lone private key is still protected
    with pytest.raises(AuditError, match=r"audit\.key already exists"):
        generate_keypair(tmp_path)
    assert private.read_bytes() == before[0]
    assert not public.exists()


def test_keyid_is_the_sha256_of_the_raw_public_key(keys: tuple[Path, Path]) -> None:
    import hashlib

    key = load_public_key(keys[1])
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    assert len(raw) == 32
    assert keyid(key) == hashlib.sha256(raw).hexdigest()


# --- DSSE pre-authentication encoding --------------------------------------------------


def test_pae_matches_the_dsse_spec_example() -> None:
    # protocol.md of secure-systems-lab/dsse, "Pre-Authentication Encoding" example.
    expected = b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    assert pae("http://example.com/HelloWorld", b"hello world") == expected


def test_pae_counts_bytes_not_characters() -> None:
    body = "héllo\n wörld ".encode()
    payload_type = "application/vnd.ünicode"
    built = (
        b"DSSEv1 "
        + b"%d " % len(payload_type.encode("utf-8"))
        + payload_type.encode("utf-8")
        + b" %d " % len(body)
        + body
    )
    assert pae(payload_type, body) == built
    assert pae("", b"") == b"DSSEv1 0  0 "


# --- sign and verify -------------------------------------------------------------------


def test_the_envelope_is_an_in_toto_statement_signed_over_pae(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    envelope = json.loads((signed / ENVELOPE_NAME).read_text())
    assert envelope["payloadType"] == PAYLOAD_TYPE == "application/vnd.in-toto+json"
    body = base64.b64decode(envelope["payload"])
    statement = json.loads(body)
    assert statement["_type"] == STATEMENT_TYPE == "https://in-toto.io/Statement/v1"
    assert statement["predicateType"] == PREDICATE_TYPE
    assert statement["predicate"] == {"verdict": "pass", "epsilon": {"user": 8.0}}
    assert [s["name"] for s in statement["subject"]] == [
        "report.json",
        "release/model.npz",
        "ledger.jsonl",
    ]
    for subject in statement["subject"]:
        assert subject["digest"]["sha256"] == sha256_file(signed / subject["name"])
    (entry,) = envelope["signatures"]
    key = load_public_key(keys[1])
    assert entry["keyid"] == keyid(key)
    # Independent check: the signature is over the spec's PAE bytes, built by hand here.
    message = b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(body), body)
    key.verify(base64.b64decode(entry["sig"]), message)


def test_an_untouched_signed_folder_verifies(signed: Path, keys: tuple[Path, Path]) -> None:
    result = verify(signed / ENVELOPE_NAME, keys[1], signed)
    assert result.ok, result.reason
    assert result.statement is not None and result.statement["predicate"]["verdict"] == "pass"


def test_a_report_edited_after_signing_fails(signed: Path, keys: tuple[Path, Path]) -> None:
    report = signed / "report.json"
    report.write_text(report.read_text().replace('"fail"', '"x"').replace('"pass"', '"fail"'))
    ok, reason = check(signed, keys[1])
    assert not ok
    assert "digest mismatch for report.json" in reason
    assert "model" not in reason and "ledger" not in reason


def test_an_edited_ledger_line_fails(signed: Path, keys: tuple[Path, Path]) -> None:
    ledger = signed / "ledger.jsonl"
    ledger.write_text(
        ledger.read_text().replace('"noise_multiplier": 0.5', '"noise_multiplier": 10')
    )
    ok, reason = check(signed, keys[1])
    assert not ok and reason.startswith("digest mismatch for ledger.jsonl")


def test_a_swapped_model_fails(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "release" / "model.npz").write_bytes(os.urandom(4096))
    ok, reason = check(signed, keys[1])
    assert not ok and reason.startswith("digest mismatch for release/model.npz")


def test_a_missing_file_is_named(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "ledger.jsonl").unlink()
    ok, reason = check(signed, keys[1])
    assert not ok and reason == "missing file ledger.jsonl"


def test_every_failing_subject_is_listed(signed: Path, keys: tuple[Path, Path]) -> None:
    (signed / "ledger.jsonl").unlink()
    (signed / "report.json").write_text("{}")
    ok, reason = check(signed, keys[1])
    assert not ok
    assert "digest mismatch for report.json" in reason and "missing file ledger.jsonl" in reason


def test_a_wrong_public_key_fails(signed: Path, tmp_path: Path) -> None:
    _, other_public = generate_keypair(tmp_path / "other")
    ok, reason = check(signed, other_public)
    assert not ok and reason.startswith("wrong public key")


def test_a_tampered_signature_fails(signed: Path, keys: tuple[Path, Path]) -> None:
    path = signed / ENVELOPE_NAME
    envelope = json.loads(path.read_text())
    sig = bytearray(base64.b64decode(envelope["signatures"][0]["sig"]))
    sig[0] ^= 0x01
    envelope["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    path.write_text(json.dumps(envelope))
    ok, reason = check(signed, keys[1])
    assert not ok and reason.startswith("bad signature")


def test_a_rehashed_statement_without_a_new_signature_fails(
    signed: Path, keys: tuple[Path, Path]
) -> None:
    """Editing the report and writing its new digest into the payload breaks the signature."""
    (signed / "report.json").write_text(json.dumps({"verdict": "pass", "epsilon": 0.1}))
    path = signed / ENVELOPE_NAME
    envelope = json.loads(path.read_text())
    statement = json.loads(base64.b64decode(envelope["payload"]))
    statement["subject"][0]["digest"]["sha256"] = sha256_file(signed / "report.json")
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    path.write_text(json.dumps(envelope))
    ok, reason = check(signed, keys[1])
    assert not ok and reason.startswith("bad signature")


def test_a_changed_payload_type_fails_the_signature(signed: Path, keys: tuple[Path, Path]) -> None:
    path = signed / ENVELOPE_NAME
    envelope = json.loads(path.read_text())
    envelope["payloadType"] = "application/json"
    path.write_text(json.dumps(envelope))
    ok, reason = check(signed, keys[1])
    assert not ok and reason.startswith("bad signature")


def test_a_signed_envelope_of_another_type_is_refused(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    from pollinate.audit.signing import load_private_key

    body = json.dumps({"_type": "https://in-toto.io/Statement/v0.1"}).encode()
    key = load_private_key(keys[0])
    envelope = {
        "payloadType": PAYLOAD_TYPE,
        "payload": base64.b64encode(body).decode(),
        "signatures": [
            {"keyid": "", "sig": base64.b64encode(key.sign(pae(PAYLOAD_TYPE, body))).decode()}
        ],
    }
    write_envelope(envelope, tmp_path / ENVELOPE_NAME)
    ok, reason = check(tmp_path, keys[1])
    assert not ok and reason.startswith("unexpected statement type")

    other = {**envelope, "payloadType": "text/plain"}
    other["signatures"] = [
        {"keyid": "", "sig": base64.b64encode(key.sign(pae("text/plain", body))).decode()}
    ]
    write_envelope(other, tmp_path / ENVELOPE_NAME)
    ok, reason = check(tmp_path, keys[1])
    assert not ok and reason.startswith("unexpected payload type")


def test_missing_or_malformed_envelope_is_a_failure_not_a_crash(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    ok, reason = check(tmp_path, keys[1])
    assert not ok and reason.startswith("missing envelope")
    (tmp_path / ENVELOPE_NAME).write_text("{not json")
    ok, reason = check(tmp_path, keys[1])
    assert not ok and reason.startswith("malformed envelope")
    ok, reason = check(tmp_path, tmp_path / "nope.pub")
    assert not ok and reason.startswith("unusable public key")


@pytest.mark.parametrize("name", ["/etc/passwd", "../outside.json", "a/../../b", "a\\b", ""])
def test_subject_names_must_stay_inside_the_folder(
    tmp_path: Path, keys: tuple[Path, Path], name: str
) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(AuditError):
        sign([(name, file)], {}, keys[0])


def test_sign_refuses_missing_files_and_duplicate_names(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    file = tmp_path / "f"
    file.write_text("x")
    with pytest.raises(AuditError, match="not a file"):
        sign([("g", tmp_path / "g")], {}, keys[0])
    with pytest.raises(AuditError, match="unique"):
        sign([("f", file), ("f", file)], {}, keys[0])
    with pytest.raises(AuditError, match="does not exist"):
        sign([("f", file)], {}, tmp_path / "missing.key")
