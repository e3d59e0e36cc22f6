"""Run every centralized reference against its quality bar and print a table.

    python simulations/benchmarks/centralized_bars.py [--data-dir DIR] [--out DIR] [--only SUBSTR]

Each run is exactly what the plain command gives (tuned defaults, fold 0, seed 0):

    pollinate centralized --dataset D --model M --task T --data-dir DIR --out OUT/D-M-T

Bars and reference figures are those of the foundation issue (test split; tuning was
done on validation data only). Results go to simulations/benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pollinate.simulations.centralized import make_config, run_centralized

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data"

# (dataset, model, task, metric, bar, higher_is_better, reference)
BARS: list[tuple[str, str, str, str, float, bool, str]] = [
    ("ml-100k", "mf", "rating", "rmse", 0.907, False, "Surprise SVD grid-tuned 0.9072"),
    ("ml-latest-small", "mf", "rating", "rmse", 0.860, False, "Surprise SVD grid-tuned 0.8601"),
    ("ml-100k", "mf", "ranking", "ndcg@10", 0.060, True, "RecBole pop 0.0436 / BPR 0.0600"),
    ("ml-100k", "interest", "ranking", "ndcg@10", 0.060, True, "RecBole BPR 0.0600"),
    (
        "ml-latest-small",
        "mf",
        "ranking",
        "ndcg@10",
        0.0266,
        True,
        "RecBole pop 0.0178 / BPR 0.0266",
    ),
    ("ml-latest-small", "interest", "ranking", "ndcg@10", 0.0266, True, "RecBole BPR 0.0266"),
    ("amazon-beauty", "mf", "ranking", "ndcg@10", 0.0179, True, "RecBole pop 0.0053 / BPR 0.0179"),
    ("amazon-beauty", "interest", "ranking", "ndcg@10", 0.021, True, "SASRec ~0.03 (published)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("runs/centralized-bars"))
    parser.add_argument("--only", default="", help="run only combos whose name contains this")
    parser.add_argument("--progress", action="store_true")
    args = parser.parse_args()

    rows = []
    for dataset, model, task, metric, bar, higher, ref in BARS:
        name = f"{dataset}-{model}-{task}"
        if args.only not in name:
            continue
        t0 = time.perf_counter()
        config = make_config(
            dataset=dataset, data_dir=args.data_dir, model=model, task=task, out=args.out / name
        )
        report = run_centralized(config, progress=args.progress)
        value = report["final"][metric]
        ok = value >= bar if higher else value <= bar
        rows.append((name, metric, value, bar, ok, ref, time.perf_counter() - t0, report))
        print(
            f"{name:34s} {metric:8s} {value:.4f}  bar {'>=' if higher else '<='} {bar:<7} "
            f"{'PASS' if ok else 'MISS'}  {time.perf_counter() - t0:6.0f}s  ({ref})",
            flush=True,
        )
    print("\n| run | metric | test | bar | | best epoch | wall (s) | reference |")
    print("|---|---|---|---|---|---|---|---|")
    for name, metric, value, bar, ok, ref, wall, report in rows:
        print(
            f"| {name} | {metric} | {value:.4f} | {bar} | {'pass' if ok else 'MISS'} | "
            f"{report['best_epoch']} | {wall:.0f} | {ref} |"
        )
    summary = [
        {"run": r[0], "metric": r[1], "value": r[2], "bar": r[3], "pass": r[4], "wall_s": r[6]}
        for r in rows
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
