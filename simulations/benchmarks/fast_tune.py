"""Federated training without Flower, for tuning: the same device and server code, one loop.

    python simulations/benchmarks/tune_inprocess.py --dataset ml-100k --rounds 60 \
        --set lr-local=0.005 --set server-lr=0.3 ...

It runs :func:`pollinate.simulations.inprocess.run_inprocess`: exactly what a Flower
round calls, DP included, without messaging. Evaluation during training is on the
validation rows of every device; the last line adds the test metrics. Use it to choose
settings on validation data; measure the chosen ones with ``pollinate simulate``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pollinate.shared.config import FederationConfig
from pollinate.simulations.inprocess import parse_config_value, run_inprocess

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config key")
    parser.add_argument("--log-every", type=int, default=5, help="evaluate every N rounds")
    parser.add_argument("--per-device", help="write each device's final test sums here (JSONL)")
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {
        "progress": False,
        "eval-every": args.log_every,
        "out": f"runs/inprocess/{os.getpid()}",
    }
    it = iter(rest)
    for flag in it:
        values[flag.lstrip("-")] = parse_config_value(next(it))
    for item in args.set:
        key, _, val = item.partition("=")
        values[key] = parse_config_value(val)
    if values.get("dataset", "synthetic") != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    cfg = FederationConfig.from_mapping(values)
    print(json.dumps({k: v for k, v in values.items() if k != "progress"}), flush=True)
    result = run_inprocess(cfg, log=lambda e: print(json.dumps(e), flush=True))
    last = {"test": result.final, "test_se": result.final_se, "seconds": round(result.seconds, 1)}
    print(json.dumps(last), flush=True)
    if args.per_device:
        with open(args.per_device, "w") as f:
            for u, part in enumerate(result.final_parts):
                f.write(json.dumps({"device": u, **part}) + "\n")


if __name__ == "__main__":
    main()
