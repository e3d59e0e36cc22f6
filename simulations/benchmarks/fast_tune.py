"""Federated training for tuning, on the fast engine: the device and server code of a
Flower round, shards of devices in Ray workers (replaces ``tune_inprocess.py``).

    python simulations/benchmarks/fast_tune.py --dataset ml-100k --rounds 60 \
        --set lr-local=0.005 --set server-lr=0.3 ...

Evaluation during training is on validation rows (``--log-every N`` rounds, all devices:
``eval-sample-rate`` 1); the last line adds the test metrics. Choose settings on
validation data; the run directory (``--out``, default ``runs/fast/PID``) is a complete
``pollinate simulate --engine fast`` run.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pollinate.shared.config import FederationConfig
from pollinate.simulations.fast import run_fast
from pollinate.simulations.fast.engine import config_flags, parse_config_value

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config key")
    parser.add_argument("--log-every", type=int, default=5, help="evaluate every N rounds")
    parser.add_argument("--workers", type=int, help="shards (default: one per CPU)")
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {
        "progress": False,
        "eval-every": args.log_every,
        "eval-sample-rate": 1.0,
        "out": f"runs/fast/{os.getpid()}",
    }
    values.update(config_flags(rest))
    for item in args.set:
        key, _, val = item.partition("=")
        values[key] = parse_config_value(val)
    if values.get("dataset", "synthetic") != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    cfg = FederationConfig.from_mapping(values)
    print(json.dumps({k: v for k, v in values.items() if k != "progress"}), flush=True)
    outcome = run_fast(cfg, workers=args.workers)
    for line in (Path(cfg.out) / "metrics.jsonl").read_text().splitlines():
        print(line, flush=True)
    summary = json.loads((Path(cfg.out) / "metrics.json").read_text())
    print(json.dumps({"test": summary["final"], "test_se": outcome.get("final_se")}), flush=True)


if __name__ == "__main__":
    main()
