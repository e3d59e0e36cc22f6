"""Test a centralized run's saved model again, optionally without its private vectors.

    python docs/experiments/scripts/rescore_central.py OUT [--private-scale 1,0,0.5]

``OUT`` is a ``pollinate centralized --out`` directory (``metrics.json`` and
``model.npz``). For each scale the users' private vectors (``user_interest`` or
``user_factors``) are multiplied by it before the test: scale 1 reproduces the reported
``final`` metrics, 0 shows what the shared parameters carry alone. ``rescore_run.py
--private-scale`` does the same for a federated run.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pollinate.simulations.centralized import rescore_centralized


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--private-scale", default="1", help="comma-separated scales")
    args = parser.parse_args()
    scales = [float(s) for s in args.private_scale.split(",")]
    reported = json.loads((args.out / "metrics.json").read_text())["final"]
    rows = {str(s): rescore_centralized(args.out, private_scale=s) for s in scales}
    print(json.dumps({"run": str(args.out), "reported": reported, "by_scale": rows}, indent=2))


if __name__ == "__main__":
    main()
