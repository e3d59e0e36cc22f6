"""A real Flower 1.41 deployment on loopback: TLS, node authentication, five devices
whose stores hold real ML-100K users, local DP, restarts, a killed server, drop-outs.

One scenario (it builds on itself), a few minutes on two cores. Everything runs as child
processes through the same functions the commands call; nothing is mocked.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from pollinate.client import Device, DevicePolicy
from pollinate.client.dp_training import device_epsilon
from pollinate.client.join import NodeFiles, join, leave, supernode_command
from pollinate.client.keys import write_key_file
from pollinate.client.store import EncryptedStore
from pollinate.server.deploy.certs import init_certs
from pollinate.server.deploy.run import RunReport, read_rounds, run_and_wait
from pollinate.server.deploy.superlink import (
    ServerState,
    list_nodes,
    register_nodes,
    start_superlink,
    stop_superlink,
)
from pollinate.shared.config import FederationConfig
from pollinate.shared.processes import (
    flower_children,
    free_port,
    read_pid_file,
    spawn,
    tool_env,
)

pytestmark = [pytest.mark.deployment, pytest.mark.slow, pytest.mark.timeout(900)]

DATA = Path(os.environ.get("POLLINATE_DATA_DIR", Path(__file__).parents[3] / "shared" / "data"))
#: Five real ML-100K users with 20 ratings each (small: a round stays short).
USERS = ("143", "147", "166", "19", "202")
NOISE, CLIP = 1.0, 0.5


def _ml100k_users() -> dict[str, list[tuple[str, float, float]]]:
    path = DATA / "ml-100k" / "u.data"
    if not path.exists():
        pytest.skip(f"ML-100K is not at {path} (set POLLINATE_DATA_DIR to /work/shared/data)")
    rows: dict[str, list[tuple[str, float, float]]] = {u: [] for u in USERS}
    for line in path.read_text().splitlines():
        user, item, rating, ts = line.split("\t")
        if user in rows:
            rows[user].append((item, float(rating), float(ts)))
    return rows


def _wait(predicate: Any, timeout: float, what: str, every: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def _ledger(store: Path, key: Path) -> list[Any]:
    with EncryptedStore.open(store, bytes.fromhex(key.read_text().strip())) as opened:
        return list(opened.ledger())


def _freeze_executor(store: Path) -> list[int]:
    """Stop (SIGSTOP) the device's ClientApp executor and any task it forked: the
    device still receives messages but can no longer answer."""
    record = read_pid_file(NodeFiles.of(store).pid_file)
    assert record is not None
    pids = flower_children(record.pid)
    assert pids, "the device's warm executor is running"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    return pids


def _tree_bytes(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True)
    pgid = os.getpgid(pid)
    return [
        int(p) for p, _, g in (line.split() for line in out.stdout.splitlines()) if int(g) == pgid
    ]


def _record_timing(rounds: dict[int, dict[str, Any]], total_s: float) -> None:
    """Print the rounds' wall times (and append them to $POLLINATE_DEPLOY_TIMINGS)."""
    line = {
        "rounds_wall_s": {r: round(float(e["wall_s"]), 2) for r, e in rounds.items()},
        "scenario_s": round(total_s, 1),
    }
    print("deployment timing:", json.dumps(line))
    target = os.environ.get("POLLINATE_DEPLOY_TIMINGS")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps(line) + "\n")


class _Phases:
    """Wall time of each step of the scenario, printed (run with -s) to see where it goes."""

    def __init__(self) -> None:
        self.start = self.last = time.monotonic()
        self.seconds: dict[str, float] = {}

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.seconds[name] = round(now - self.last, 1)
        self.last = now
        print(f"[{now - self.start:6.1f}s] {name}: {self.seconds[name]}s", flush=True)


def test_loopback_deployment(tmp_path: Path) -> None:
    phase = _Phases()
    users = _ml100k_users()
    certs = init_certs(tmp_path / "certs", nodes=6)
    state = tmp_path / "server"
    port = free_port()
    start_superlink(certs.root, state, port=port)
    superlink = f"127.0.0.1:{port}"
    try:
        ids = register_nodes(state, [certs.node_public_key(f"node-{i:02d}") for i in range(1, 6)])
        assert len(set(ids)) == 5
        phase("CA, SuperLink, 5 registrations")

        # Five devices, each a store filled through the SDK from one real user.
        devices: list[tuple[Path, Path]] = []
        for i, user in enumerate(USERS, 1):
            folder = tmp_path / f"device-{i}"
            folder.mkdir()
            key = folder / "store.key"
            write_key_file(key)
            store = folder / "store.db"
            with Device.open(store, key_file=key) as device:
                for item, rating, ts in users[user]:
                    device.record(item, kind="rating", rating=rating, timestamp=ts)
                device.policy = DevicePolicy(
                    local_dp=True, noise_multiplier=NOISE, clip=CLIP, evaluation="refuse"
                )
            devices.append((store, key))
        phase("5 stores filled through the SDK")

        def start_device(i: int) -> None:
            store, key = devices[i]
            join(
                store,
                superlink=superlink,
                ca_cert=certs.ca_cert,
                node_key=certs.node_key(f"node-{i + 1:02d}"),
                key_file=key,
            )

        for i in range(5):
            start_device(i)

        # A sixth device with a key the operator never registered is turned away.
        rogue_store = tmp_path / "rogue" / "store.db"
        rogue_store.parent.mkdir()
        write_key_file(rogue_store.parent / "store.key")
        join(
            rogue_store,
            superlink=superlink,
            ca_cert=certs.ca_cert,
            node_key=certs.node_key("node-06"),
            key_file=rogue_store.parent / "store.key",
            max_wait=20,
            warm=False,  # it never gets a message
        )
        # A plain-text (no TLS) node cannot connect at all.
        plain_log = tmp_path / "plain.log"
        plain = spawn(
            supernode_command(
                superlink=superlink,
                config='pollinate-store="/nonexistent"',
                clientappio_port=free_port(),
                ca_cert=None,
                node_key=None,
                insecure=True,
                max_wait=20,
            ),
            log_file=plain_log,
            env=tool_env({"FLWR_HOME": str(tmp_path / "plain-home")}),
        )

        cfg = FederationConfig.from_mapping(
            {
                "dataset": "ml-100k",
                "data-dir": str(DATA),
                "task": "rating",
                "rounds": 3,
                "sample-rate": 1.0,
                "num-devices": 5,
                "eval-every": 0,
                "dp": "local",
                "local-noise": NOISE,
                "local-clip": CLIP,
                "out": str(tmp_path / "run"),
                "wait-timeout": 180,
                "send-catalogue": True,
            }
        )
        run_dir = Path(cfg.out)

        # Round 1 runs. In round 2 device 3 receives its message and disappears before
        # replying (its executor frozen, then killed with its SuperNode): the round goes
        # on without it. Right after round 2 the whole server side is killed in round 3;
        # device 3 restarts while the server is down; the run resumes from its checkpoint.
        reports: list[RunReport] = []
        runner = threading.Thread(target=lambda: reports.append(run_and_wait(state, cfg, out=None)))
        t_start = time.monotonic()
        runner.start()
        _wait(lambda: any(r.get("round") == 1 for r in read_rounds(run_dir)), 400, "round 1")
        phase("submit, enroll, round 1")
        frozen = _freeze_executor(devices[2][0])
        assert all(len(_ledger(*d)) == 1 for d in devices), "each device released once in round 1"
        eps_after_1 = [_ledger(*d)[-1].epsilon for d in devices]
        node_log = NodeFiles.of(devices[2][0]).log_file
        _wait(lambda: node_log.read_text().count("Receiving: train") >= 2, 120, "round 2 sent")
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        leave(devices[2][0])
        _wait(lambda: any(r.get("round") == 2 for r in read_rounds(run_dir)), 400, "round 2")
        phase("round 2 (device 3 dropped out mid-round)")
        stop_superlink(state)  # SuperLink, SuperExec and ServerApp, in round 3
        runner.join(120)
        assert not runner.is_alive()
        assert reports and not reports[0].ok, "a killed server run must not report success"
        checkpointed = [r["round"] for r in read_rounds(run_dir) if r["round"] >= 1]
        assert checkpointed == [1, 2], checkpointed
        start_device(2)  # restarted between rounds, while the server is down
        phase("server killed in round 3, device 3 restarted")

        # The SuperLink comes back on its state (registrations kept); devices reconnect.
        start_superlink(certs.root, state, port=port)
        _wait(
            lambda: sum(n.get("status") == "online" for n in list_nodes(state)) >= 5,
            180,
            "five devices back online",
        )
        phase("SuperLink restarted, devices back")
        resumed = run_and_wait(state, cfg, resume=True, out=None)
        total_s = time.monotonic() - t_start
        assert resumed.ok, (resumed.status, resumed.details)
        phase("resumed run to the end")

        rounds = {r["round"]: r for r in read_rounds(run_dir) if r["round"] >= 1}
        numbered = [r["round"] for r in read_rounds(run_dir) if r["round"] >= 1]
        assert numbered == [1, 2, 3], f"each round once after the resume, got {numbered}"
        assert numbered[: len(checkpointed)] == checkpointed
        assert rounds[1]["aggregated"] == 5 and rounds[1]["failed"] == 0
        # The drop-out did not stop round 2, and the round says so.
        assert rounds[2]["aggregated"] == 4 and rounds[2]["failed"] == 1, rounds[2]
        assert rounds[3]["aggregated"] == 5 and rounds[3]["failed"] == 0, rounds[3]

        # Each device's ε grew as its own ledger says, continued across its restart and
        # the server's; a charge made before a release that never arrived stays.
        for i, (store, key) in enumerate(devices):
            events = _ledger(store, key)
            trained = sorted({e.round for e in events})
            assert trained[0] == 1 and trained[-1] == 3, trained
            assert len(events) >= (2 if i == 2 else 3)
            history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
            assert events[-1].epsilon == pytest.approx(device_epsilon(history, events[-1].delta))
            assert [e.epsilon for e in events] == sorted(e.epsilon for e in events)
            assert events[-1].epsilon > eps_after_1[i]
            with Device.open(store, key_file=key) as device:
                assert device.privacy().epsilon["local"] == pytest.approx(events[-1].epsilon)
                model = device.global_model()
                assert model is not None and model.round == 3
        assert rounds[3]["local_epsilon_max"] == pytest.approx(
            max(_ledger(*d)[-1].epsilon for d in devices)
        )
        _record_timing(rounds, total_s)

        # The model changed from its seeded start, and the devices kept the last one.
        import numpy as np

        from pollinate.server.federation import initial_global_state
        from pollinate.shared.tasks import catalog_of, load_task_for

        start = initial_global_state(cfg, catalog_of(load_task_for(cfg).data))
        released = dict(np.load(run_dir / "release" / "model.npz"))
        assert set(released) == set(start)
        assert any(not np.allclose(released[k], start[k]) for k in start)
        with Device.open(devices[0][0], key_file=devices[0][1]) as device:
            kept = device.global_model()
        assert kept is not None and set(kept.params) == set(start)

        # Refused: the unregistered node and the plain-text one.
        rogue_log = NodeFiles.of(rogue_store).log_file.read_text()
        assert "2004" in rogue_log or "412" in rogue_log, rogue_log[-2000:]
        assert not any(str(n.get("status")) == "online" and False for n in list_nodes(state))
        assert sum(n.get("status") == "online" for n in list_nodes(state)) == 5
        plain.wait(60)
        assert plain.returncode != 0
        # The server never held a store key: not in its files, environment or arguments.
        server_bytes = _tree_bytes(state) + _tree_bytes(run_dir)
        for _, key in devices:
            hex_key = key.read_text().strip()
            assert hex_key.encode() not in server_bytes
            assert str(key).encode() not in server_bytes
        record = ServerState(state).record()
        for pid in _descendants(record.pid):
            env = Path(f"/proc/{pid}/environ").read_bytes()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            for _, key in devices:
                assert key.read_text().strip().encode() not in env + cmd
    finally:
        stores = [store for store, _ in devices] if "devices" in locals() else []
        stores += [rogue_store] if "rogue_store" in locals() else []
        with ThreadPoolExecutor(max_workers=max(1, len(stores))) as pool:
            list(pool.map(leave, stores))  # side by side: each waits for its processes
        stop_superlink(state)
        shutil.rmtree(tmp_path / "certs", ignore_errors=True)
