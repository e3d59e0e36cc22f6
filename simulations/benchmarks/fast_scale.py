"""Scale of the fast engine: a synthetic federation of many devices, with its peak memory.

    python simulations/benchmarks/fast_scale.py --out runs/fast-scale \
        [--users 100000 --sample-rate 0.01 --rounds 20 --dp user --user-epsilon 8]

Runs the whole fast-engine run in this process (Ray started here: the driver, the Ray
services and the shard workers are this process's descendants) and samples the resident
memory of the process tree every 0.2 s from /proc (``scale.py``'s sampler). Prints one
JSON line: seconds per training round, devices trained per second, enrolment and final
evaluation seconds, whole-run seconds, the peak tree RSS (GB), and the load average.
Shared pages (Ray's object store, mapped by several processes) count once per process:
the figure is an upper bound.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scale import PeakMemory

from pollinate.shared.config import FederationConfig
from pollinate.simulations.fast import run_fast
from pollinate.simulations.fast.engine import config_flags


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/fast-scale")
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=None)
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {
        "dataset": "synthetic",
        "synthetic-users": args.users,
        "rounds": 20,
        "sample-rate": 0.01,
        "eval-every": 0,
        "dp": "user",
        "user-epsilon": 8.0,
        "progress": False,
        "seed": 0,
    }
    values.update(config_flags(rest))
    out = Path(args.out)
    values.update(out=str(out), **{"device-state-dir": str(out / "devices")})
    cfg = FederationConfig.from_mapping(values)
    load = [os.getloadavg()[0]]
    peak = PeakMemory()
    peak.start()
    t0 = time.perf_counter()
    outcome = run_fast(cfg, workers=args.workers)
    wall = time.perf_counter() - t0
    peak.stop.set()
    peak.join()
    load.append(os.getloadavg()[0])
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["round"] >= 1]
    trained = sum(r["sampled"] for r in rounds)
    train_s = sum(r["train_wall_s"] for r in rounds)
    summary = json.loads((out / "metrics.json").read_text())
    print(
        json.dumps(
            {
                "devices": outcome["devices"],
                "rounds": len(rounds),
                "workers": summary["workers"],
                "devices_trained": trained,
                "s_per_round_median": round(statistics.median(r["wall_s"] for r in rounds), 2),
                "devices_per_s": round(trained / train_s, 1),
                "enroll_s": round(outcome["enroll_s"], 1),
                "final_eval_s": round(outcome["final_eval_s"], 1),
                "run_wall_s": round(wall, 1),
                "peak_tree_rss_gb": round(peak.peak / 1e9, 2),
                "user_epsilon": (summary["privacy"].get("user") or {}).get("epsilon"),
                "final": summary["final"],
                "load_average_1min": [round(x, 2) for x in load],
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
