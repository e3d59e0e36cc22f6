"""Compare a federated run with its centralized reference (the issue's utility bars).

    python simulations/benchmarks/compare.py CENTRAL_DIR FEDERATED_DIR

Prints each shared final metric, both values and the federated gap: for error metrics
(rmse, mae) the relative increase, for ranking metrics the relative decrease.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

LOWER_IS_BETTER = {"rmse", "mae"}


def gaps(
    central: dict[str, float], federated: dict[str, float]
) -> dict[str, tuple[float, float, float]]:
    out = {}
    for key in sorted(set(central) & set(federated)):
        c, f = central[key], federated[key]
        gap = (f - c) / c if key in LOWER_IS_BETTER else (c - f) / c
        out[key] = (c, f, gap)
    return out


def main() -> None:
    central_dir, fed_dir = (Path(a) for a in sys.argv[1:3])
    c = json.loads((central_dir / "metrics.json").read_text())
    f = json.loads((fed_dir / "metrics.json").read_text())
    print(f"{c['dataset']} {c['task']} {c['model']}: centralized vs federated")
    for key, (cv, fv, gap) in gaps(c["final"], f["final"]).items():
        print(f"  {key:14s} {cv:.4f}  {fv:.4f}  gap {gap:+.1%}")


if __name__ == "__main__":
    main()
