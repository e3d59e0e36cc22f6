"""Scale benchmark: a synthetic federation of many devices on this machine.

    python simulations/benchmarks/scale.py --users 10000 --sample-rate 0.01 --rounds 20

Reports seconds per round, devices trained per second, the share of round time spent in
local training versus Flower/Ray overhead (measured from the devices' own training
clocks), and the peak resident memory of the whole process tree (driver, Ray, workers),
sampled from /proc every 0.2 s.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from pathlib import Path

from pollinate.shared.config import FederationConfig
from pollinate.simulations.engine import DEFAULT_CPUS_PER_DEVICE, run_federation
from pollinate.simulations.fast.engine import parse_config_value

PAGE = os.sysconf("SC_PAGE_SIZE")


def _tree_rss(root: int) -> int:
    """Resident bytes of ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


class PeakMemory(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _tree_rss(os.getpid()))
            time.sleep(0.2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--items", type=int, default=2_000)
    ap.add_argument("--sample-rate", type=float, default=0.01)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--model", default="mf")
    ap.add_argument("--task", default="rating")
    ap.add_argument("--cpus-per-device", type=float, default=DEFAULT_CPUS_PER_DEVICE)
    ap.add_argument("--out", default="runs/bench-scale")
    ap.add_argument("--set", action="append", default=[], help="KEY=VALUE config key")
    args = ap.parse_args()
    extra = {k: parse_config_value(v) for k, _, v in (s.partition("=") for s in args.set)}

    cfg = FederationConfig.from_mapping(
        {
            "dataset": "synthetic",
            "synthetic-users": args.users,
            "synthetic-items": args.items,
            "model": args.model,
            "task": args.task,
            "rounds": args.rounds,
            "sample-rate": args.sample_rate,
            "eval-every": 0,
            "out": args.out,
            "device-state-dir": str(Path(args.out) / "devices"),
            "progress": False,
            **extra,
        }
    )
    mem = PeakMemory()
    mem.start()
    t0 = time.perf_counter()
    run_federation(cfg, cpus_per_device=args.cpus_per_device)
    total = time.perf_counter() - t0
    mem.stop.set()
    mem.join()

    rounds = [json.loads(line) for line in Path(args.out, "metrics.jsonl").read_text().splitlines()]
    summary = json.loads(Path(args.out, "metrics.json").read_text())
    workers = max(1, int((os.cpu_count() or 1) // args.cpus_per_device))
    steady = rounds[1:] or rounds  # round 1 includes starting Ray's workers
    wall = sum(r["train_wall_s"] for r in steady)
    trained = sum(r["aggregated"] for r in steady)
    device_s = sum(r["device_train_s"] for r in steady)
    # Local training uses at most `workers` cores at once; the rest of the round's
    # core-seconds are Flower/Ray messaging, (de)serialisation and the server's work.
    train_share = device_s / (wall * workers) if wall else 0.0
    report = {
        "devices": args.users,
        "sample_rate": args.sample_rate,
        "rounds": args.rounds,
        "total_s": round(total, 1),
        "first_round_s": round(rounds[0]["train_wall_s"], 2),
        "s_per_round_median": round(statistics.median(r["train_wall_s"] for r in steady), 2),
        "devices_per_round_mean": round(trained / len(steady), 1),
        "devices_trained_per_s": round(trained / wall, 1) if wall else None,
        "local_training_share": round(train_share, 3),
        "overhead_share": round(1 - train_share, 3),
        "final_eval_devices": summary["devices"],
        "final": summary["final"],
        "peak_rss_gb": round(mem.peak / 2**30, 2),
        "workers": workers,
    }
    print(json.dumps(report, indent=2))
    Path(args.out, "bench.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
