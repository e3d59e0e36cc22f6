"""Certificates and node keys of a Pollinate deployment, made with ``cryptography``.

``init_certs(DIR)`` writes, and never overwrites:

* ``ca.crt`` / ``ca.key``: a self-signed CA (ECDSA P-384) that signs the SuperLink's
  certificate. Devices trust ``ca.crt`` (``--root-certificates``); ``ca.key`` stays
  offline with the operator.
* ``superlink.crt`` / ``superlink.key``: the SuperLink's TLS certificate. Its subject
  alternative names hold every host the devices dial **and** ``127.0.0.1``: Flower 1.41's
  SuperLink starts the ServerApp in a subprocess that connects back to
  ``127.0.0.1:PORT`` over the same TLS port, and fails the handshake otherwise.
* ``nodes/NAME`` / ``nodes/NAME.pub``: one OpenSSH ECDSA P-384 key pair per device, the
  format ``flower-supernode --auth-supernode-private-key`` and ``flwr supernode
  register`` read. The private key goes to its device, the public one is registered on
  the SuperLink (``pollinate server register``).

Private keys are written with mode 0600 before any byte of them is (no window in which
another user could read one).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pollinate.shared.errors import PollinateError

#: Hosts every SuperLink certificate names: the ServerApp subprocess dials 127.0.0.1.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
NODES_DIR = "nodes"
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class CertError(PollinateError):
    """Certificates or keys cannot be made or read as asked."""


@dataclass(frozen=True)
class CertPaths:
    """Where the files of one deployment's credentials live (``DIR`` of ``init_certs``)."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        return self.root / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.root / "superlink.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "superlink.key"

    def node_key(self, name: str) -> Path:
        return self.root / NODES_DIR / name

    def node_public_key(self, name: str) -> Path:
        return self.root / NODES_DIR / f"{name}.pub"

    def node_names(self) -> list[str]:
        folder = self.root / NODES_DIR
        if not folder.is_dir():
            return []
        return sorted(p.stem for p in folder.glob("*.pub"))


def _write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 (refusing to overwrite) and write ``data``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CertError(f"{path} exists; refusing to overwrite a private key") from None
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(path, 0o600)  # whatever the umask


def _write_public(path: Path, data: bytes) -> None:
    if path.exists():
        raise CertError(f"{path} exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, 0o644)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _san(hosts: Iterable[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return x509.SubjectAlternativeName(names)


def server_hosts(extra: Sequence[str] = ()) -> list[str]:
    """The SANs of a SuperLink certificate: ``extra`` (the names devices dial) plus the
    loopback names, each once, in order."""
    out: list[str] = []
    for host in (*extra, *LOOPBACK_HOSTS):
        host = host.strip()
        if not host:
            raise CertError("an empty host name cannot go into a certificate; drop it")
        if host not in out:
            out.append(host)
    return out


def _check_node_name(name: str) -> None:
    if not _NODE_NAME.match(name):
        raise CertError(
            f"node name {name!r} is not a plain file name (letters, digits, '_', '.', '-', "
            "up to 64); choose another"
        )


def make_node_key(paths: CertPaths, name: str) -> tuple[Path, Path]:
    """One device's OpenSSH ECDSA P-384 key pair under ``DIR/nodes``; never overwritten."""
    _check_node_name(name)
    private, public = paths.node_key(name), paths.node_public_key(name)
    if private.exists() or public.exists():
        raise CertError(f"node key {name!r} exists in {private.parent}; choose another name")
    key = ec.generate_private_key(ec.SECP384R1())
    _write_private(
        private,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
    )
    pub = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    _write_public(public, pub + f" pollinate-{name}\n".encode())
    return private, public


def init_certs(
    root: Path,
    *,
    hosts: Sequence[str] = (),
    nodes: int = 0,
    node_prefix: str = "node",
    valid_days: int = 365,
) -> CertPaths:
    """Write a CA, the SuperLink certificate (SANs: ``hosts`` + loopback) and ``nodes``
    node key pairs into ``root``. Refuses a folder that already holds a CA, so nothing is
    ever overwritten; add devices later with :func:`make_node_key`."""
    if valid_days < 1:
        raise CertError(f"valid_days must be at least 1, got {valid_days}")
    if nodes < 0:
        raise CertError(f"nodes must be 0 or more, got {nodes}")
    paths = CertPaths(root)
    for existing in (paths.ca_cert, paths.ca_key, paths.server_cert, paths.server_key):
        if existing.exists():
            raise CertError(
                f"{existing} exists; {root} already holds a deployment's credentials. "
                "Add a device key with `pollinate certs node DIR NAME`, or choose an empty folder"
            )
    sans = server_hosts(hosts)
    now = dt.datetime.now(dt.UTC)
    not_before = now - dt.timedelta(minutes=5)
    not_after = now + dt.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Pollinate deployment CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA384())
    )

    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, sans[0])]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(_san(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA384())
    )

    _write_private(paths.ca_key, _pem_key(ca_key))
    _write_public(paths.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write_private(paths.server_key, _pem_key(server_key))
    _write_public(paths.server_cert, server_cert.public_bytes(serialization.Encoding.PEM))
    for i in range(1, nodes + 1):
        make_node_key(paths, f"{node_prefix}-{i:02d}")
    return paths


def certificate_hosts(cert_path: Path) -> list[str]:
    """The subject alternative names of a PEM certificate, as strings."""
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.IPAddress)] + list(
        san.get_values_for_type(x509.DNSName)
    )


def check_server_credentials(paths: CertPaths) -> None:
    """Raise :class:`CertError` unless the SuperLink's files exist and its certificate
    names 127.0.0.1 (which its own ServerApp subprocess dials)."""
    for path in (paths.ca_cert, paths.server_cert, paths.server_key):
        if not path.is_file():
            raise CertError(f"{path} is missing; run `pollinate certs init {paths.root}` first")
    if "127.0.0.1" not in certificate_hosts(paths.server_cert):
        raise CertError(
            f"{paths.server_cert} does not name 127.0.0.1 among its subject alternative names; "
            "Flower's ServerApp connects to the SuperLink there. Make it with "
            "`pollinate certs init`, or add 127.0.0.1 to your own certificate"
        )
