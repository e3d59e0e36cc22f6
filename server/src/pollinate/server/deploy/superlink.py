"""The operator's SuperLink: started with TLS and node authentication, stopped by pid.

Everything lives in one state folder (default ``pollinate-server/``)::

    superlink.pid     the process (pid, start time), its address and certificates
    superlink.log     its output
    state.db          Flower's link state: registered nodes survive a restart
    flwr-home/        FLWR_HOME of every ``flwr`` call we make: a connection named
                      ``pollinate`` (address + CA), never the user's ~/.flwr
    apps/             the Flower App folders that ``pollinate server run`` submits

Facts of flwr 1.41 this relies on (checked against its source): one HTTPS port serves the
Fleet, Control and Runtime APIs (``--host``/``--port``, default 127.0.0.1:8000); the
SuperLink starts ``flower-superexec`` from PATH, which connects back to
``127.0.0.1:PORT`` over TLS (hence the SAN); ``--enable-supernode-auth`` admits only
SuperNodes whose public key was registered with ``flwr supernode register``.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from pollinate.server.deploy.certs import CertPaths, check_server_credentials
from pollinate.shared.errors import PollinateError
from pollinate.shared.processes import (
    PidRecord,
    alive,
    log_tail,
    port_free,
    read_pid_file,
    spawn,
    stop,
    tool_env,
    tool_path,
    write_pid_file,
)

CONNECTION = "pollinate"
DEFAULT_PORT = 8000
MARKER = "flower-superlink"
#: Flower's SuperExec reads its task-poll interval (seconds, default 1) from this.
SUPEREXEC_POLL_ENV = "FLWR_SUPEREXEC_TASK_POLL_INTERVAL"
SUPEREXEC_POLL_S = "0.2"


class SuperLinkError(PollinateError):
    """The SuperLink cannot be started, reached or used as asked."""


@dataclass(frozen=True)
class ServerState:
    """The files of one SuperLink (see the module docstring)."""

    root: Path

    @property
    def pid_file(self) -> Path:
        return self.root / "superlink.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "superlink.log"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"

    @property
    def apps(self) -> Path:
        return self.root / "apps"

    def env(self) -> dict[str, str]:
        # The SuperLink's SuperExec looks for a submitted run every second by default.
        return tool_env(
            {"FLWR_HOME": str(self.flwr_home.resolve()), SUPEREXEC_POLL_ENV: SUPEREXEC_POLL_S}
        )

    def record(self) -> PidRecord:
        """The running SuperLink's record; SuperLinkError when none runs."""
        record = read_pid_file(self.pid_file)
        if record is None or not alive(record):
            raise SuperLinkError(
                f"no SuperLink of {self.root} is running; start it with "
                f"`pollinate server start --state {self.root}`"
            )
        return record


def superlink_command(
    certs: CertPaths, state: ServerState, *, host: str, port: int, auth: bool = True
) -> list[str]:
    command = [
        tool_path("flower-superlink"),
        "--ssl-ca-certfile", str(certs.ca_cert.resolve()),
        "--ssl-certfile", str(certs.server_cert.resolve()),
        "--ssl-keyfile", str(certs.server_key.resolve()),
        "--host", host,
        "--port", str(port),
        "--database", str(state.database.resolve()),
        # Devices and the ServerApp use the Pollinate installed here, never `uv sync`.
        "--disable-runtime-dependency-installation",
    ]  # fmt: skip
    if auth:
        command.append("--enable-supernode-auth")
    return command


def write_connection(state: ServerState, address: str, ca_cert: Path) -> Path:
    """``flwr-home/config.toml`` with one connection, ``pollinate``, as the default."""
    state.flwr_home.mkdir(parents=True, exist_ok=True)
    path = state.flwr_home / "config.toml"
    path.write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n'
        f'[superlink.{CONNECTION}]\naddress = "{address}"\n'
        f"root-certificates = {json.dumps(str(ca_cert.resolve()))}\n"
    )
    return path


def _healthy(host: str, port: int, ca_cert: Path) -> bool:
    context = ssl.create_default_context(cafile=str(ca_cert))
    dial = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    url = f"https://{dial if ':' not in dial else f'[{dial}]'}:{port}/health"
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as response:
            return bool(response.status == 200)
    except urllib.error.HTTPError:
        return True  # it answered over TLS: up, whatever it thinks of /health
    except (OSError, ssl.SSLError):
        return False


def start_superlink(
    certs_dir: Path,
    state_dir: Path,
    *,
    host: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    auth: bool = True,
    timeout: float = 60.0,
) -> PidRecord:
    """Start a SuperLink with TLS (and node authentication unless ``auth`` is False) as
    a child process in its own session; return once it answers over TLS."""
    certs = CertPaths(certs_dir)
    check_server_credentials(certs)
    state = ServerState(state_dir)
    state.root.mkdir(parents=True, exist_ok=True)
    running = read_pid_file(state.pid_file)
    if running is not None and alive(running):
        raise SuperLinkError(
            f"a SuperLink of {state.root} already runs (pid {running.pid}, "
            f"{running.info.get('address')}); stop it with `pollinate server stop --state "
            f"{state.root}` first"
        )
    if not port_free(host, port):
        raise SuperLinkError(f"{host}:{port} is in use by another program; pick another --port")
    command = superlink_command(certs, state, host=host, port=port, auth=auth)
    proc = spawn(command, log_file=state.log_file, env=state.env(), cwd=state.root)
    dial = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    address = f"{dial}:{port}"
    record = write_pid_file(
        state.pid_file,
        proc.pid,
        MARKER,
        {
            "address": address,
            "certs": str(certs.root.resolve()),
            "log": str(state.log_file.resolve()),
            "auth": str(auth).lower(),
        },
    )
    write_connection(state, address, certs.ca_cert)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            state.pid_file.unlink(missing_ok=True)
            raise SuperLinkError(
                f"flower-superlink exited with code {proc.returncode} at start; its log "
                f"({state.log_file}) ends with:\n{log_tail(state.log_file)}"
            )
        if _healthy(host, port, certs.ca_cert):
            return record
        time.sleep(0.3)
    stop(state.pid_file)
    raise SuperLinkError(
        f"the SuperLink did not answer on {address} within {timeout:.0f}s and was stopped; "
        f"its log ({state.log_file}) ends with:\n{log_tail(state.log_file)}"
    )


def stop_superlink(state_dir: Path, timeout: float = 15.0) -> PidRecord | None:
    """Stop exactly the SuperLink of ``state_dir`` (its ServerApp and SuperExec with it)."""
    return stop(ServerState(state_dir).pid_file, timeout=timeout)


def flwr(
    state: ServerState, *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """Run Flower's own ``flwr`` CLI against this SuperLink's connection."""
    return subprocess.run(
        [tool_path("flwr"), *args],
        env=state.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _json_out(result: subprocess.CompletedProcess[str], what: str) -> dict[str, object]:
    text = result.stdout
    start = text.find("{")
    try:
        data = json.loads(text[start:]) if start >= 0 else None
    except json.JSONDecodeError:
        data = None
    if result.returncode != 0 or not isinstance(data, dict) or not data.get("success", False):
        detail = (data or {}).get("error-message") if isinstance(data, dict) else None
        raise SuperLinkError(
            f"{what} failed (exit {result.returncode}): "
            f"{detail or (result.stderr.strip() or result.stdout.strip())[-2000:]}"
        )
    return data


def register_node(state_dir: Path, public_key: Path) -> int:
    """Register a device's public key (``flwr supernode register``); returns its node id."""
    state = ServerState(state_dir)
    state.record()
    if not public_key.is_file():
        raise SuperLinkError(f"{public_key} does not exist; give the node's .pub file")
    result = flwr(
        state, "supernode", "register", str(public_key.resolve()), CONNECTION, "--format", "json"
    )
    data = _json_out(result, f"registering {public_key}")
    return int(str(data["node-id"]))


def register_nodes(state_dir: Path, public_keys: list[Path]) -> list[int]:
    """Register several keys at once (one ``flwr`` process each, side by side)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda key: register_node(state_dir, key), public_keys))


def list_nodes(state_dir: Path) -> list[dict[str, object]]:
    state = ServerState(state_dir)
    data = _json_out(
        flwr(state, "supernode", "list", CONNECTION, "--format", "json"), "listing nodes"
    )
    nodes = data.get("nodes", [])
    return list(nodes) if isinstance(nodes, list) else []
