"""Side-by-side sizes of two models' parameters (RMS and largest magnitude per array).

    python docs/experiments/scripts/weight_scales.py A.npz B.npz

A and B are weight files with the same array names: a federated run's
``global_params.npz`` and a centralized run's ``model.npz``, say (arrays only one of
them holds, such as the centralized model's private vectors, are listed alone). It
prints one JSON object per array: shape, RMS and largest |value| in each, and the ratio
of the RMS values (B / A); and the median of the per-row L2 norms of 2-D tables.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def sizes(a: np.ndarray) -> dict[str, float]:
    a = np.asarray(a, dtype=np.float64)
    out = {"rms": float(np.sqrt(np.mean(a * a))), "absmax": float(np.abs(a).max())}
    if a.ndim == 2 and a.shape[0] > 1:
        out["row_norm_median"] = float(np.median(np.linalg.norm(a, axis=1)))
    return out


def compare(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for name in [*a, *(k for k in b if k not in a)]:
        row: dict[str, object] = {"array": name}
        for label, side in (("a", a), ("b", b)):
            if name in side:
                row["shape"] = list(np.shape(side[name]))
                row[label] = sizes(side[name])
        if name in a and name in b:
            ra, rb = sizes(a[name])["rms"], sizes(b[name])["rms"]
            row["rms_ratio_b_over_a"] = rb / ra if ra > 0 else None
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    args = parser.parse_args()
    with np.load(args.a) as fa, np.load(args.b) as fb:
        a = {k: fa[k] for k in fa.files}
        b = {k: fb[k] for k in fb.files}
    for row in compare(a, b):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
