"""``pollinate device join``: a SuperNode whose ClientApp trains on this device's store.

Flower 1.41 has no supported way to run a SuperNode inside another Python process, so
the device starts ``flower-supernode`` as a child process, with:

* TLS to the SuperLink, trusting the deployment's CA (``--root-certificates``);
* the device's node key (``--auth-supernode-private-key``; its ``.pub`` must have been
  registered by the operator, else the SuperLink answers HTTP 412, code 2004);
* a node config naming the store and where its key comes from (a 0600 key file or the
  platform keyring): the ClientApp process Flower starts for each message opens the
  store with it (:func:`pollinate.client.app.store_reply`). The key itself is never on
  a command line and never reaches the server;
* its own ``FLWR_HOME`` and ClientAppIo port, so several devices can share a machine;
* by default Flower's ``process`` isolation, with Pollinate's warm executor
  (:mod:`pollinate.client.executor`) beside it: one process that imported torch and the
  ClientApp once forks a fresh child per message, instead of Flower's ``subprocess`` mode
  starting (and importing) a new ``flwr-clientapp`` per message; and the SuperNode looks
  for messages every second, not every 3 (:mod:`pollinate.client.supernode`).
  ``warm=False`` runs ``flower-supernode`` exactly as Flower ships it.

The files of one joined device live beside its store, in ``STORE.node/``:
``supernode.pid`` (pid and start time: :func:`leave` stops exactly that process, and the
executor, which names it with ``--parent-pid``), ``supernode.log``, ``executor.log`` and
``flwr-home/``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pollinate.shared.errors import PollinateError
from pollinate.shared.processes import (
    PidRecord,
    alive,
    free_port,
    log_tail,
    read_pid_file,
    spawn,
    stop,
    tool_env,
    tool_path,
)
from pollinate.shared.processes import write_pid_file as _write_pid_file

#: A word in the command line of both ``flower-supernode`` and ``pollinate.client.supernode``.
MARKER = "supernode"
#: The ClientApp's node-config keys (see pollinate.client.app).
STORE_NODE_KEY = "pollinate-store"
STORE_KEY_FILE_NODE_KEY = "pollinate-store-key-file"
STORE_KEYRING_NODE_KEY = "pollinate-store-keyring"


class JoinError(PollinateError):
    """The device cannot join as asked."""


@dataclass(frozen=True)
class NodeFiles:
    """Where a joined device keeps its SuperNode's files: ``STORE.node/``."""

    root: Path

    @classmethod
    def of(cls, store: Path) -> NodeFiles:
        return cls(store.parent / f"{store.name}.node")

    @property
    def pid_file(self) -> Path:
        return self.root / "supernode.pid"

    @property
    def log_file(self) -> Path:
        return self.root / "supernode.log"

    @property
    def executor_log(self) -> Path:
        return self.root / "executor.log"

    @property
    def flwr_home(self) -> Path:
        return self.root / "flwr-home"


def _quoted(value: str, what: str) -> str:
    if '"' in value or "\n" in value:
        raise JoinError(f"{what} {value!r} holds a quote or a newline; use another path")
    return f'"{value}"'


def node_config(store: Path, *, key_file: Path | None, keyring: str | None) -> str:
    """The ``--node-config`` text: the store and where its key comes from."""
    if (key_file is None) == (keyring is None):
        raise JoinError("give exactly one of a store key file or a keyring SERVICE:USER")
    parts = [f"{STORE_NODE_KEY}={_quoted(str(store.resolve()), 'store path')}"]
    if key_file is not None:
        parts.append(
            f"{STORE_KEY_FILE_NODE_KEY}={_quoted(str(key_file.resolve()), 'key file path')}"
        )
    else:
        assert keyring is not None
        parts.append(f"{STORE_KEYRING_NODE_KEY}={_quoted(keyring, 'keyring name')}")
    return " ".join(parts)


def supernode_command(
    *,
    superlink: str,
    config: str,
    clientappio_port: int,
    ca_cert: Path | None,
    node_key: Path | None,
    insecure: bool = False,
    max_wait: float | None = None,
    warm: bool = False,
) -> list[str]:
    """The ``flower-supernode`` command line. ``warm``: ``--isolation process`` (the
    ClientApps are run by :func:`executor_command`'s process, not by Flower), through
    :mod:`pollinate.client.supernode` (Flower's entry point, idle pulls every second)."""
    launcher = [sys.executable, "-m", "pollinate.client.supernode"]
    command = [*(launcher if warm else [tool_path("flower-supernode")]), "--superlink", superlink]
    if insecure:
        command.append("--insecure")
    else:
        if ca_cert is None:
            raise JoinError("a TLS SuperLink needs the deployment's CA certificate (--ca)")
        command += ["--root-certificates", str(ca_cert.resolve())]
    if node_key is not None:
        command += ["--auth-supernode-private-key", str(node_key.resolve())]
    command += ["--node-config", config, "--port", str(clientappio_port)]
    if max_wait is not None:
        command += ["--max-wait-time", str(max_wait)]
    if warm:
        command += ["--isolation", "process"]
    return command


def executor_command(clientappio_port: int, supernode_pid: int) -> list[str]:
    """The warm executor serving the SuperNode's Runtime API on loopback; it exits with
    the SuperNode, and :func:`pollinate.shared.processes.stop` finds it by its
    ``--parent-pid``."""
    return [
        sys.executable, "-m", "pollinate.client.executor",
        "--runtime-api-address", f"127.0.0.1:{clientappio_port}",
        "--parent-pid", str(supernode_pid),
    ]  # fmt: skip


def store_key(node_config: Mapping[str, Any]) -> bytes:
    """The store's key, from the key file or keyring entry the node config names."""
    from pollinate.client.keys import StoreKeyError, key_from_file, key_from_keyring

    if node_config.get(STORE_KEY_FILE_NODE_KEY):
        return key_from_file(Path(str(node_config[STORE_KEY_FILE_NODE_KEY])))
    if node_config.get(STORE_KEYRING_NODE_KEY):
        service, sep, user = str(node_config[STORE_KEYRING_NODE_KEY]).partition(":")
        if not sep or not service or not user:
            raise StoreKeyError(
                f"{STORE_KEYRING_NODE_KEY} must be SERVICE:USER, got "
                f"{node_config[STORE_KEYRING_NODE_KEY]!r}"
            )
        return key_from_keyring(service, user, create=False)
    raise StoreKeyError(
        f"the node config names a store ({STORE_NODE_KEY}) but no key: set "
        f"{STORE_KEY_FILE_NODE_KEY} (a 0600 key file) or {STORE_KEYRING_NODE_KEY}"
    )


def check_store(store: Path, *, key_file: Path | None, keyring: str | None) -> int:
    """Open the store as the ClientApp will (wrong key, damage: a clear error now, not a
    refusal per round); return its device key. The store is created if absent."""
    from pollinate.client.store import EncryptedStore

    conf = {STORE_NODE_KEY: str(store)}
    if key_file is not None:
        conf[STORE_KEY_FILE_NODE_KEY] = str(key_file)
    if keyring is not None:
        conf[STORE_KEYRING_NODE_KEY] = keyring
    with EncryptedStore.open(store, store_key(conf)) as opened:
        policy = opened.policy()
        if policy.simulated:
            raise JoinError(f"{store}'s policy says simulated; a real device cannot be")
        return int(opened.device_key())


def join(
    store: Path,
    *,
    superlink: str,
    ca_cert: Path | None,
    node_key: Path | None,
    key_file: Path | None = None,
    keyring: str | None = None,
    insecure: bool = False,
    clientappio_port: int | None = None,
    max_wait: float | None = None,
    check: bool = True,
    warm: bool = True,
) -> PidRecord:
    """Start this device's SuperNode as a child process (own session, pid file), and
    with ``warm`` (the default) the warm executor that runs its ClientApps."""
    files = NodeFiles.of(store)
    running = read_pid_file(files.pid_file)
    if running is not None and alive(running):
        raise JoinError(
            f"{store} already has a SuperNode (pid {running.pid}); stop it with "
            f"`pollinate device leave --store {store}` first"
        )
    if node_key is not None and not node_key.is_file():
        raise JoinError(f"{node_key} does not exist; give the device's private node key")
    if check:
        check_store(store, key_file=key_file, keyring=keyring)
    port = clientappio_port or free_port()
    command = supernode_command(
        superlink=superlink,
        config=node_config(store, key_file=key_file, keyring=keyring),
        clientappio_port=port,
        ca_cert=ca_cert,
        node_key=node_key,
        insecure=insecure,
        max_wait=max_wait,
        warm=warm,
    )
    files.root.mkdir(parents=True, exist_ok=True)
    env = tool_env({"FLWR_HOME": str(files.flwr_home.resolve())})
    proc = spawn(command, log_file=files.log_file, env=env, cwd=files.root)
    record = _write_pid_file(
        files.pid_file,
        proc.pid,
        MARKER,
        {"superlink": superlink, "store": str(store.resolve()), "log": str(files.log_file)},
    )
    executor = None
    if warm:
        executor = spawn(
            executor_command(port, proc.pid), log_file=files.executor_log, env=env,
            cwd=files.root,
        )  # fmt: skip
    time.sleep(0.5)
    if proc.poll() is not None:
        stop(files.pid_file, timeout=5.0)
        raise JoinError(
            f"flower-supernode exited with code {proc.returncode} at start; its log "
            f"({files.log_file}) ends with:\n{log_tail(files.log_file)}"
        )
    if executor is not None and executor.poll() is not None:
        stop(files.pid_file, timeout=5.0)
        raise JoinError(
            f"the ClientApp executor exited with code {executor.returncode} at start; its "
            f"log ({files.executor_log}) ends with:\n{log_tail(files.executor_log)}"
        )
    return record


def leave(store: Path, timeout: float = 15.0) -> PidRecord | None:
    """Stop this device's SuperNode (and the ClientApp it runs, if any)."""
    return stop(NodeFiles.of(store).pid_file, timeout=timeout)
