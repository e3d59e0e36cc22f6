"""Seconds per round of a real Flower deployment on loopback, TLS and node authentication.

    .venv/bin/python docs/experiments/scripts/deploy_rounds.py --devices 5 --rounds 3 \
        --data-dir ../shared/data --out /tmp/deploy-rounds
    # the same with Flower's own isolation (a fresh flwr-clientapp process per message):
    .venv/bin/python docs/experiments/scripts/deploy_rounds.py --cold ...

A CA, a SuperLink with TLS and ``--enable-supernode-auth``, N registered SuperNodes, each on
an encrypted store filled through the SDK with one real ML-100K user (users 143, 147, 166,
19, 202, 32: about 20 ratings each), ``mf`` rating, local DP (noise 1.0, clip 0.5),
sample rate 1, no evaluation rounds. It prints one JSON line: set-up and run seconds, each
round's ``wall_s`` from the run's ``metrics.jsonl``, and the load average at the end.
(The session-local script behind the 2026-12-07 figures, kept so they can be rerun.)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from pollinate.client import Device, DevicePolicy
from pollinate.client.join import join, leave
from pollinate.client.keys import write_key_file
from pollinate.server.deploy.certs import init_certs
from pollinate.server.deploy.run import read_rounds, run_and_wait
from pollinate.server.deploy.superlink import register_node, start_superlink, stop_superlink
from pollinate.shared.config import FederationConfig
from pollinate.shared.processes import free_port

USERS = ("143", "147", "166", "19", "202", "32")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=5, choices=range(1, len(USERS) + 1))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--out", type=Path, required=True, help="scratch folder (replaced)")
    parser.add_argument(
        "--cold", action="store_true", help="no warm executor: Flower's default isolation"
    )
    args = parser.parse_args()
    users, root = USERS[: args.devices], args.out
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)

    t0 = time.time()
    certs = init_certs(root / "certs", nodes=args.devices)
    port = free_port()
    start_superlink(root / "certs", root / "server", port=port)
    try:
        for k in range(1, args.devices + 1):
            register_node(root / "server", certs.node_public_key(f"node-{k:02d}"))
        rows: dict[str, list[tuple[str, float, float]]] = {}
        with open(args.data_dir / "ml-100k" / "u.data") as fh:
            for line in fh:
                u, i, r, t = line.split()
                if u in users:
                    rows.setdefault(u, []).append((i, float(r), float(t)))
        for k, u in enumerate(users, 1):
            store, key = root / f"dev{k}" / "store.db", root / f"dev{k}" / "key"
            store.parent.mkdir()
            write_key_file(key)
            with Device.open(store, key_file=key) as device:
                for item, rating, ts in rows[u]:
                    device.record(item, kind="rating", rating=rating, timestamp=ts)
                device.policy = DevicePolicy(
                    local_dp=True, noise_multiplier=1.0, clip=0.5, evaluation="refuse"
                )
            join(
                store,
                superlink=f"127.0.0.1:{port}",
                ca_cert=certs.ca_cert,
                node_key=certs.node_key(f"node-{k:02d}"),
                key_file=key,
                warm=not args.cold,
            )
        setup_s = time.time() - t0
        cfg = FederationConfig.from_mapping(
            {
                "dataset": "ml-100k",
                "data-dir": str(args.data_dir),
                "rounds": args.rounds,
                "sample-rate": 1.0,
                "num-devices": args.devices,
                "eval-every": 0,
                "dp": "local",
                "local-noise": 1.0,
                "local-clip": 0.5,
                "out": str(root / "run"),
                "wait-timeout": 120,
                "send-catalogue": True,
            }
        )
        t1 = time.time()
        report = run_and_wait(root / "server", cfg, out=None)
        run_s = time.time() - t1
        keys = ("round", "wall_s", "aggregated", "failed")
        print(
            json.dumps(
                {
                    "status": report.status,
                    "warm_executor": not args.cold,
                    "setup_s": round(setup_s, 1),
                    "run_s": round(run_s, 1),
                    "rounds": [{k: r.get(k) for k in keys} for r in read_rounds(root / "run")],
                    "load": os.getloadavg(),
                }
            )
        )
    finally:
        for k in range(1, args.devices + 1):
            if (root / f"dev{k}" / "store.db").exists():
                leave(root / f"dev{k}" / "store.db")
        stop_superlink(root / "server")


if __name__ == "__main__":
    main()
