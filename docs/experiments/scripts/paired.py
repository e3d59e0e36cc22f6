"""Paired difference of one metric between two runs on the same users.

    python docs/experiments/scripts/paired.py A.jsonl B.jsonl [--metric ndcg@10]
    python docs/experiments/scripts/paired.py A_seed0.jsonl,A_seed1.jsonl B0.jsonl,B1.jsonl,B2.jsonl

A and B are per-device sums (``rescore_run.py --per-device`` or ``tune_inprocess.py
--per-device``) of the same devices in the same order. It prints the mean of A − B over
the devices that hold an evaluated user, its standard error (``sd(A − B, ddof=1) / √n``)
and the correlation of the per-device values: paired, the noise of which users were
drawn cancels, so two settings are compared far more sharply than by two separate SEs.

Either side may be several runs of one setting, comma-separated (seeds): a device's
value is then its mean over them, and ``a_runs``/``b_runs`` list each run's own mean.
The standard error is over users; it does not count how the runs' means scatter around
their mean (a seed shifts every user at once), so read it beside ``a_runs``/``b_runs``.
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


def runs(paths: str, metric: str) -> np.ndarray:
    """One row per run of ``paths`` (comma-separated), one column per device."""
    values = [per_device(p, metric) for p in paths.split(",")]
    sizes = {v.size for v in values}
    if len(sizes) != 1:
        raise SystemExit(f"{paths}: the runs hold different numbers of devices {sorted(sizes)}")
    return np.vstack(values)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", help="per-device file, or several (comma-separated) to average")
    parser.add_argument("b", help="per-device file, or several (comma-separated) to average")
    parser.add_argument("--metric", default="ndcg@10")
    args = parser.parse_args()
    a_runs, b_runs = runs(args.a, args.metric), runs(args.b, args.metric)
    if a_runs.shape[1] != b_runs.shape[1]:
        raise SystemExit(
            f"{args.a} has {a_runs.shape[1]} devices and {args.b} {b_runs.shape[1]}: not paired"
        )
    # A device counts where every run of both sides evaluated it.
    both = ~(np.isnan(a_runs).any(axis=0) | np.isnan(b_runs).any(axis=0))
    a_runs, b_runs = a_runs[:, both], b_runs[:, both]
    a, b = a_runs.mean(axis=0), b_runs.mean(axis=0)
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
    if len(a_runs) > 1 or len(b_runs) > 1:
        out["a_runs"] = [float(v) for v in a_runs.mean(axis=1)]
        out["b_runs"] = [float(v) for v in b_runs.mean(axis=1)]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
