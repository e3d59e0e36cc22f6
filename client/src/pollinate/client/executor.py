"""A warm ClientApp executor for a device's SuperNode (Flower's ``process`` isolation).

In its default (``subprocess``) isolation a Flower 1.41 SuperNode starts
``flower-superexec``, which starts a fresh ``flwr-clientapp`` process for every message;
each imports torch, Flower, Opacus and dp-accounting, and its first optimizer imports
``torch._dynamo``: 3 s of CPU and 5 to 15 s of wall time on a loaded two-core machine,
for about 1 s of the device's own work.

``flower-supernode --isolation process`` leaves the executor to the operator: something
must ask the SuperNode's Runtime API for tasks (``AcquireTask``) and run each with its
token. This module is that executor, as ``flower-superexec`` would be, with one
difference: it imports and warms everything once, then **forks** one child per task,
which runs Flower's own ``run_clientapp`` with the task's token and exits. Each message
still gets a fresh process (the ClientApp keeps no state between messages but the
store, as before); only the start-up is shared. The parent never opens the store, never
holds its key and never runs a ClientApp; it stays single-threaded so that forking is
safe, and it exits when the SuperNode (``--parent-pid``) does.

``pollinate device join`` starts it beside the SuperNode (:mod:`pollinate.client.join`);
the Runtime API stays on loopback, as in Flower's default mode.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Sequence
from types import FrameType
from typing import Any, NoReturn

#: What a message's handling would otherwise import in each fresh process (the
#: ClientApp, its store, Flower's ClientApp runtime, and what torch.optim, Opacus and the
#: PLD accountant import on first use).
WARM_MODULES = (
    "pollinate.client.app",
    "pollinate.client.store",
    "pollinate.shared.catalogue",
    "pollinate.client.keys",
    "pollinate.client.dp_training",
    "pollinate.shared.privacy.accounting",
    "torch._dynamo",
    "opacus",
    "dp_accounting.pld",
    "flwr.supernode.runtime.run_clientapp",
    "flwr.cli.install",
)
CLIENT_APP_TASK = "flwr-clientapp"


def warm_up(modules: Sequence[str] = WARM_MODULES) -> None:
    """Import what every task needs, without running anything (no threads, no store)."""
    for name in modules:
        importlib.import_module(name)


def _parent_alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_task(address: str, token: str, executor_pid: int) -> NoReturn:
    """In a forked child: run one ClientApp task as ``flwr-clientapp`` would, then exit
    (never return into the parent's loop)."""
    code = 1
    try:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from flwr.supernode.runtime.run_clientapp import run_clientapp

        run_clientapp(
            runtime_api_address=address,
            token=token,
            insecure=True,
            certificates=None,
            parent_pid=executor_pid,
        )
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # a child must exit, whatever happened
        traceback.print_exc()
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def _log(text: str) -> None:
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
    print(f"{stamp} pollinate executor: {text}", flush=True)


class _Children:
    """The task processes this executor forked (pid: task id, start), reaped as they end;
    the log says how long each took."""

    def __init__(self) -> None:
        self.running: dict[int, tuple[int, float]] = {}

    def add(self, pid: int, task_id: int) -> None:
        self.running[pid] = (task_id, time.monotonic())
        _log(f"task {task_id} in pid {pid}")

    def reap(self) -> None:
        for pid, (task_id, start) in list(self.running.items()):
            status = None
            with contextlib.suppress(ChildProcessError):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done == 0:
                    continue
            del self.running[pid]
            code = "?" if status is None else os.waitstatus_to_exitcode(status)
            _log(f"task {task_id} ended in {time.monotonic() - start:.2f}s (exit {code})")

    def terminate(self) -> None:
        for pid in self.running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)


def _client(address: str) -> Any:
    from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    retry = make_simple_http_retry_invoker()
    retry.max_tries = 1  # our loop retries, and checks in between that the SuperNode lives
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,
        root_certificates=None,
        interceptors=[RuntimeVersionHttpInterceptor(component_name="SuperExec")],
        retry_invoker=retry,
    )


def serve(address: str, parent_pid: int | None, poll_s: float = 0.1) -> None:
    """Warm up, then run each ClientApp task the SuperNode at ``address`` hands out in a
    forked child, until the SuperNode exits or we are told to stop."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611

    warm_up()
    children = _Children()
    stopping = False

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    client = _client(address)
    _log(f"warm, serving the ClientApp tasks of {address}")
    try:
        while not stopping and _parent_alive(parent_pid):
            children.reap()
            try:
                res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[CLIENT_APP_TASK]))
            except Exception as exc:  # the SuperNode may be (re)starting
                _log(f"the Runtime API does not answer ({exc}); retrying")
                time.sleep(1.0)
                continue
            if res.HasField("task") and res.token:
                me = os.getpid()
                pid = os.fork()
                if pid == 0:
                    run_task(address, res.token, me)
                children.add(pid, int(res.task.task_id))
                continue  # another task may be waiting
            time.sleep(poll_s)
    finally:
        children.terminate()
        with contextlib.suppress(Exception):
            client.close()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pollinate.client.executor",
        description="Run a SuperNode's ClientApp tasks in forked children of one warm process.",
    )
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's HOST:PORT")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit when this pid does")
    parser.add_argument("--poll", type=float, default=0.1, help="seconds between task polls")
    args = parser.parse_args(argv)
    serve(args.runtime_api_address, args.parent_pid, args.poll)


if __name__ == "__main__":
    main()
