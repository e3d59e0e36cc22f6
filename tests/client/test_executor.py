"""The warm ClientApp executor beside a device's SuperNode (real processes, loopback
only; the whole path, with a SuperLink and real tasks, runs in
tests/deployment/test_loopback.py)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from pollinate.client import executor
from pollinate.client.join import MARKER, NodeFiles, executor_command, supernode_command
from pollinate.shared.processes import (
    alive,
    flower_children,
    free_port,
    read_pid_file,
    spawn,
    stop,
    tool_env,
    write_pid_file,
)


def test_warm_join_runs_the_supernode_in_process_isolation_and_names_it_as_parent() -> None:
    ca = Path("ca.crt")
    warm = supernode_command(
        superlink="127.0.0.1:1", config="x=1", clientappio_port=9, ca_cert=ca, node_key=None,
        warm=True,
    )  # fmt: skip
    cold = supernode_command(
        superlink="127.0.0.1:1", config="x=1", clientappio_port=9, ca_cert=ca, node_key=None
    )
    assert warm[warm.index("--isolation") + 1] == "process"
    assert warm[1:3] == ["-m", "pollinate.client.supernode"]
    assert "--isolation" not in cold  # Flower's default: a flwr-clientapp per message
    assert cold[0].endswith("flower-supernode")
    assert all(MARKER in " ".join(c) for c in (warm, cold))
    command = executor_command(9, 4242)
    assert command[:3] == [sys.executable, "-m", "pollinate.client.executor"]
    # Loopback only, and found by stop() through the SuperNode's pid.
    assert command[command.index("--runtime-api-address") + 1] == "127.0.0.1:9"
    assert command[command.index("--parent-pid") + 1] == "4242"


def test_the_executor_exits_once_its_supernode_is_gone(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()
    start = time.monotonic()
    # Nothing listens on the port either: it keeps retrying only while the parent lives.
    executor.serve(f"127.0.0.1:{free_port()}", gone.pid, poll_s=0.05)
    assert time.monotonic() - start < 30


def test_leave_stops_the_supernode_and_its_executor(tmp_path: Path) -> None:
    files = NodeFiles.of(tmp_path / "store.db")
    files.root.mkdir()
    env = tool_env()
    # A stand-in for flower-supernode (the real one needs a SuperLink): a process whose
    # command line carries the pid file's marker.
    node = spawn(
        [sys.executable, "-c", "import time; time.sleep(120)", "flower-supernode"],
        log_file=files.log_file, env=env,
    )  # fmt: skip
    record = write_pid_file(files.pid_file, node.pid, "flower-supernode", {})
    runner = spawn(executor_command(free_port(), node.pid), log_file=files.executor_log, env=env)
    deadline = time.monotonic() + 10
    while runner.pid not in flower_children(node.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert runner.pid in flower_children(node.pid)
    assert stop(files.pid_file, timeout=10) == record
    assert runner.wait(15) is not None and node.wait(15) is not None
    assert not alive(record) and read_pid_file(files.pid_file) is None


def test_the_warm_parent_imports_the_client_app_but_never_opens_a_store() -> None:
    code = (
        "import sys; from pollinate.client import executor; executor.warm_up(); "
        "import pollinate.client.app as app; "
        "assert 'torch._dynamo' in sys.modules and 'opacus' in sys.modules; "
        "assert not app._STORES, app._STORES; "
        "import threading; assert threading.active_count() == 1, threading.enumerate()"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
        env=tool_env(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]


def test_the_supernode_loop_sleeps_at_most_the_idle_pull() -> None:
    import inspect

    import flwr.supernode.start_client_internal as loop

    from pollinate.client.supernode import IDLE_PULL_S, cap_idle_pull

    # The loop this tunes: an idle pull sleeps 3 s in the Flower pinned here.
    assert "time.sleep(3)" in inspect.getsource(loop.start_client_internal)
    original = loop.time
    try:
        cap_idle_pull(loop, cap=0.05)
        start = time.monotonic()
        loop.time.sleep(3)
        assert time.monotonic() - start < 1.0
        assert loop.time.monotonic() > 0  # everything else is the time module's
    finally:
        loop.time = original
    assert IDLE_PULL_S < 3
