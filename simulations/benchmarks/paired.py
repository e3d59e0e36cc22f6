"""Paired difference of one metric between two runs on the same users.

    python simulations/benchmarks/paired.py A.jsonl B.jsonl [--metric ndcg@10]

A and B are per-device sums (``rescore_run.py --per-device`` or ``tune_inprocess.py
--per-device``) of the same devices in the same order. It prints the mean of A − B over
the devices that hold an evaluated user, its standard error (``sd(A − B, ddof=1) / √n``)
and the correlation of the per-device values: paired, the noise of which users were
drawn cancels, so two settings are compared far more sharply than by two separate SEs.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def per_device(path: str, metric: str) -> np.ndarray:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    key = f"{metric}_sum"
    return np.array([r[key] / r["count"] if r.get("count") else np.nan for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args()
    a, b = per_device(args.a, args.metric), per_device(args.b, args.metric)
    if a.shape != b.shape:
        raise SystemExit(f"{args.a} has {a.size} devices and {args.b} {b.size}: not paired")
    both = ~(np.isnan(a) | np.isnan(b))
    a, b = a[both], b[both]
    d = a - b
    out = {
        "metric": args.metric,
        "devices": int(d.size),
        "a": float(a.mean()),
        "b": float(b.mean()),
        "a_minus_b": float(d.mean()),
        "se": float(d.std(ddof=1) / np.sqrt(d.size)),
        "correlation": float(np.corrcoef(a, b)[0, 1]),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
