"""Child processes that outlive the command that started them, stopped by a pid file.

A pid file names one process exactly: its pid, its start time (``/proc/PID/stat``
field 22) and a word its command line must contain. :func:`stop` signals the process
only when all three still match, so a stale file whose pid was reused by another
program, or another SuperLink on the same machine, is never touched (unlike
``pkill -f flower-superlink``, which stops them all).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from pollinate.shared.errors import PollinateError
from pollinate.shared.fileio import atomic_write_bytes


class ProcessError(PollinateError):
    """A child process could not be started, found or stopped as asked."""


@dataclass(frozen=True)
class PidRecord:
    pid: int
    #: Clock ticks since boot at which the process started (None where /proc is absent).
    start_time: int | None
    #: A word the process's command line contains (``flower-superlink``, ...).
    marker: str
    #: Anything else worth keeping (address, log file ...).
    info: dict[str, str]


def _start_time(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; fields after its ')' are fixed.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return None


def alive(record: PidRecord) -> bool:
    """Whether the process the record names is still that process and running."""
    try:
        os.kill(record.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process: not ours
    if not Path("/proc").is_dir():
        return True  # no way to tell more; the pid exists
    state = Path(f"/proc/{record.pid}/stat")
    try:
        if state.read_text().split(") ", 1)[1].startswith("Z"):
            return False  # a zombie has exited
    except (OSError, IndexError):
        return False
    cmdline = _cmdline(record.pid)
    return (
        cmdline is not None
        and record.marker in cmdline
        and _start_time(record.pid) == record.start_time
    )


def tool_path(name: str) -> str:
    """The path of a console script installed beside this Python (the venv's bin)."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


def tool_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of Flower's tools: this Python's bin first on PATH (a SuperLink
    starts ``flower-superexec`` and a SuperNode ``flwr-clientapp`` from PATH)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    # A device or server tool sends nothing to Flower's telemetry service.
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    if extra:
        env.update(extra)
    return env


def spawn(
    command: Sequence[str],
    *,
    log_file: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (it outlives us), output to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def write_pid_file(path: Path, pid: int, marker: str, info: Mapping[str, str]) -> PidRecord:
    record = PidRecord(pid, _start_time(pid), marker, dict(info))
    atomic_write_bytes(path, json.dumps(asdict(record), indent=2).encode())
    return record


def read_pid_file(path: Path) -> PidRecord | None:
    """The record in ``path``, or None when there is none."""
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text())
        return PidRecord(
            int(raw["pid"]),
            None if raw["start_time"] is None else int(raw["start_time"]),
            str(raw["marker"]),
            {str(k): str(v) for k, v in raw.get("info", {}).items()},
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise ProcessError(
            f"{path} is not a Pollinate pid file ({exc}); check that no process it named "
            "still runs, then delete it"
        ) from None


def flower_children(pid: int) -> list[int]:
    """The processes Flower started detached on behalf of ``pid``, recursively.

    A SuperLink starts ``flower-superexec --parent-pid SUPERLINK`` in a new session,
    which starts ``flwr-serverapp ... --parent-pid SUPEREXEC`` (a SuperNode likewise its
    ClientApps). They are outside our process group, so stopping the group would leave
    a ServerApp running on; they are found by that flag instead.
    """
    found: list[int] = []
    frontier = [pid]
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    while frontier:
        parent = frontier.pop()
        flag = f"--parent-pid {parent} "
        for entry in proc.iterdir():
            if not entry.name.isdigit() or int(entry.name) in found:
                continue
            cmdline = _cmdline(int(entry.name))
            if cmdline and flag in cmdline + " ":
                found.append(int(entry.name))
                frontier.append(int(entry.name))
    return found


def stop(path: Path, *, timeout: float = 15.0) -> PidRecord | None:
    """Stop the process ``path`` names (SIGTERM, then SIGKILL after ``timeout``), its
    process group and the processes Flower detached for it (:func:`flower_children`);
    remove the pid file. Returns the record, or None when nothing ran."""
    record = read_pid_file(path)
    if record is None:
        return None
    if not alive(record):
        path.unlink(missing_ok=True)
        return None
    children = flower_children(record.pid)
    _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and alive(record):
        time.sleep(0.1)
    if alive(record):
        _signal_group(record.pid, signal.SIGKILL)
        time.sleep(0.2)
    for child in children:
        # Their own monitors stop them once the parent is gone; do not rely on it.
        _terminate(child, timeout=5.0)
    path.unlink(missing_ok=True)
    return record


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return not Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return False


def _terminate(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _running(pid):
        time.sleep(0.1)
    if _running(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal ``pid``'s process group when it leads one (we start each in its own
    session), else the process alone."""
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)
    except ProcessLookupError:
        pass


def port_free(host: str, port: int) -> bool:
    """Whether nothing listens on ``host:port``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (for tests and loopback set-ups)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])
