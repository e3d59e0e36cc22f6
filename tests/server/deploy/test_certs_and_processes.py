"""Certificates, node keys, pid files and the submitted run config (no network)."""

from __future__ import annotations

import ipaddress
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

from pollinate.server.deploy.certs import (
    CertError,
    CertPaths,
    certificate_hosts,
    check_server_credentials,
    init_certs,
    make_node_key,
)
from pollinate.server.deploy.run import RESUME_KEY, app_folder, round_trouble, run_config
from pollinate.server.deploy.superlink import ServerState
from pollinate.shared.config import FederationConfig
from pollinate.shared.processes import (
    PidRecord,
    alive,
    read_pid_file,
    spawn,
    stop,
    tool_env,
    write_pid_file,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_certs_init_makes_a_ca_a_server_cert_naming_loopback_and_node_keys(
    tmp_path: Path,
) -> None:
    paths = init_certs(tmp_path / "c", hosts=["link.example.org", "10.0.0.7"], nodes=2)
    ca = x509.load_pem_x509_certificate(paths.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(paths.server_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert server.issuer == ca.subject
    # The CA's key signed the SuperLink's certificate.
    ca_key = ca.public_key()
    assert isinstance(ca_key, ec.EllipticCurvePublicKey)
    server.verify_directly_issued_by(ca)
    hosts = certificate_hosts(paths.server_cert)
    assert {"127.0.0.1", "localhost", "::1", "link.example.org", "10.0.0.7"} <= set(hosts)
    ips = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in ips.get_values_for_type(x509.IPAddress)
    for private in (paths.ca_key, paths.server_key, paths.node_key("node-01")):
        assert _mode(private) == 0o600, private
    assert paths.node_names() == ["node-01", "node-02"]
    # Node keys are what flower-supernode and `flwr supernode register` read.
    key = load_ssh_private_key(paths.node_key("node-01").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
    pub = load_ssh_public_key(paths.node_public_key("node-01").read_bytes())
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    assert pub.public_numbers() == key.public_key().public_numbers()
    check_server_credentials(paths)


def test_certs_are_never_overwritten(tmp_path: Path) -> None:
    paths = init_certs(tmp_path, nodes=1)
    before = paths.ca_key.read_bytes(), paths.node_key("node-01").read_bytes()
    with pytest.raises(CertError, match="already holds"):
        init_certs(tmp_path)
    with pytest.raises(CertError, match="exists"):
        make_node_key(paths, "node-01")
    with pytest.raises(CertError, match="plain file name"):
        make_node_key(paths, "../escape")
    assert (paths.ca_key.read_bytes(), paths.node_key("node-01").read_bytes()) == before
    private, _ = make_node_key(paths, "kiosk-7")
    assert _mode(private) == 0o600


def test_a_certificate_without_127_0_0_1_is_refused(tmp_path: Path) -> None:
    paths = init_certs(tmp_path / "a")
    other = init_certs(tmp_path / "b")
    # Swap in a certificate whose SANs lack 127.0.0.1 (build one quickly).
    from cryptography.hazmat.primitives import hashes, serialization

    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("example.org")]), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    paths.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(CertError, match=r"127\.0\.0\.1"):
        check_server_credentials(paths)
    check_server_credentials(other)
    with pytest.raises(CertError, match="certs init"):
        check_server_credentials(CertPaths(tmp_path / "missing"))


def _sleeper(tmp_path: Path, marker: str) -> subprocess.Popen[bytes]:
    return spawn(
        [sys.executable, "-c", "import time; time.sleep(120)", marker],
        log_file=tmp_path / f"{marker}.log",
        env=tool_env(),
    )


def test_stop_ends_exactly_the_recorded_process(tmp_path: Path) -> None:
    ours = _sleeper(tmp_path, "pollinate-test-ours")
    theirs = _sleeper(tmp_path, "pollinate-test-theirs")
    try:
        pid_file = tmp_path / "ours.pid"
        record = write_pid_file(pid_file, ours.pid, "pollinate-test-ours", {"k": "v"})
        assert read_pid_file(pid_file) == record and alive(record)
        # A record whose start time does not match (a reused pid) is not that process.
        assert not alive(PidRecord(theirs.pid, 1, "pollinate-test-theirs", {}))
        assert not alive(PidRecord(theirs.pid, record.start_time, "pollinate-test-ours", {}))
        assert stop(pid_file, timeout=5) == record
        ours.wait(10)
        assert ours.returncode is not None and not pid_file.exists()
        assert theirs.poll() is None, "another process with a similar command line survives"
        # A stale pid file (the process is gone) is cleaned up and nothing is signalled.
        write_pid_file(pid_file, ours.pid, "pollinate-test-ours", {})
        assert stop(pid_file) is None and not pid_file.exists()
    finally:
        theirs.kill()
        ours.kill()


def test_a_garbled_pid_file_is_an_error_not_a_guess(tmp_path: Path) -> None:
    pid_file = tmp_path / "x.pid"
    pid_file.write_text("12 34")
    from pollinate.shared.processes import ProcessError

    with pytest.raises(ProcessError, match="not a Pollinate pid file"):
        stop(pid_file)


def test_every_config_key_reaches_the_server_app_as_a_run_config_key(tmp_path: Path) -> None:
    cfg = FederationConfig.from_mapping(
        {"dataset": "ml-100k", "data-dir": "data", "dp": "local", "local-noise": 1.3,
         "local-epsilon-budget": 8.0, "num-devices": 5, "local-evaluation": "noised",
         "server-lr": 0.2, "out": "runs/x", "send-catalogue": True}
    )  # fmt: skip
    folder = app_folder(ServerState(tmp_path), run_config(cfg, resume=True))
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    assert project["tool"]["flwr"]["app"]["components"] == {
        "serverapp": "pollinate.server.app:app",
        "clientapp": "pollinate.client.app:app",
    }
    values = dict(project["tool"]["flwr"]["app"]["config"])
    assert values.pop(RESUME_KEY) is True
    back = FederationConfig.from_mapping(values)
    # What the ServerApp validates is the operator's config (paths made absolute, no
    # progress bar in a log): local DP and every other key came through.
    expected = cfg.model_copy(
        update={"out": str(Path("runs/x").resolve()), "data_dir": str(Path("data").resolve()),
                "progress": False}
    )  # fmt: skip
    assert back == expected
    assert back.local_noise == 1.3 and back.num_devices == 5


def test_a_round_with_failed_devices_says_so() -> None:
    assert round_trouble({"round": 1, "failed": 0, "refused": {}, "rejected": 0}) is None
    text = round_trouble({"round": 2, "failed": 1, "refused": {"no-data": 2}, "rejected": 0})
    assert text is not None and "1 failed" in text and "no-data" in text


@pytest.mark.parametrize("seconds", [0.2])
def test_alive_is_false_for_a_zombie(tmp_path: Path, seconds: float) -> None:
    proc = spawn([sys.executable, "-c", "pass", "pollinate-zombie"], log_file=tmp_path / "z",
                 env=tool_env())  # fmt: skip
    record = write_pid_file(tmp_path / "z.pid", proc.pid, "pollinate-zombie", {})
    time.sleep(seconds + 0.5)  # it exited; not yet reaped: a zombie
    assert not alive(record)
    proc.wait()
