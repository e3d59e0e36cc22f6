"""Evaluate a finished simulation's run directory again, with standard errors.

    python simulations/benchmarks/rescore_run.py RUN_DIR [--part test] [--per-device FILE]
        [--private-scale S]

It scores with :mod:`pollinate.simulations.oracle`, which rebuilds every simulated device
from the run's ``config.json``, loads the run's final
global parameters (``global_params.npz``) and each device's latest private parameters
from its store (``device-state-dir``; a device that never trained gets the ClientApp's
seeded initial ones), and evaluates as the final Flower round does.
It prints the metrics, which must equal the run's ``metrics.json`` (a check of the run
directory), and their standard errors over users (:func:`standard_errors`), which runs
made before the server reported them lack. ``--per-device`` writes each device's metric
sums (JSON lines), for a paired comparison of two runs on the same users.
``--private-scale S`` multiplies each device's private vector (``user_interest`` or
``user_factors``) by S first: 0 removes it and measures what the global parameters carry
alone (``pollinate.simulations.centralized.rescore_centralized`` does the same for a
centralized run).

It needs the run's device stores on disk (``device-state-dir`` set, as ``pollinate
simulate`` does by default); private state kept in Flower's node state is gone with the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.shared.errors import PollinateError
from pollinate.simulations.oracle import oracle_parts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--per-device", type=Path, help="write each device's sums here")
    parser.add_argument(
        "--private-scale", type=float, default=1.0, help="multiply the private vector by this"
    )
    args = parser.parse_args()
    run: Path = args.run_dir
    try:
        cfg, parts = oracle_parts(run, args.part, args.private_scale)
    except PollinateError as exc:
        sys.exit(str(exc))
    if args.per_device is not None:
        with args.per_device.open("w") as f:
            for u, part in enumerate(parts):
                f.write(json.dumps({"device": u, **part}) + "\n")
    out = {
        "run": str(run),
        "part": args.part,
        "private_scale": args.private_scale,
        "devices": len(parts),
        "metrics": finalize(cfg.task, add_sums(parts)),
        "se": standard_errors(cfg.task, parts),
    }
    summary = run / "metrics.json"
    if args.part == "test" and summary.exists():
        out["reported"] = json.loads(summary.read_text()).get("final")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
