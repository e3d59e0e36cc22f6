"""Issue 29's bars: `pollinate audit` on ML-100K runs with canaries and held-out users.

Runs (each on the Flower engine, secure noise, 1,000 canaries of each kind the run's
layers need, 20% of users held out for the release attack), then audits each against the
non-private baseline, and appends one JSON line per audited run to ``--results``. A run
whose folder already holds ``metrics.json`` is not run again (resume by re-running).

    python simulations/benchmarks/audit_bars.py --data-dir ../shared/data \\
        --out runs/audit-bars --results simulations/benchmarks/audit_bars.jsonl
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path
from typing import Any

from pollinate.shared.config import FederationConfig

AUDIT = {"audit-canaries": 1000, "audit-holdout": 0.2, "eval-every": 0, "progress": False}
# The tuned settings of RESULTS.md (issue 28 rows): user-level and local DP on ML-100K.
USER = {
    "dataset": "ml-100k",
    "rounds": 30,
    "sample-rate": 1.0,
    "lr-local": 0.005,
    "weight-decay": 0.05,
    "server-opt": "fedavg",
    "server-lr": 100.0,
    "user-clip": 0.1,
    "learn-global-mean": False,
    "private-refit": False,
}
LOCAL = {
    "dataset": "ml-100k",
    "rounds": 10,
    "sample-rate": 1.0,
    "lr-local": 0.005,
    "weight-decay": 0.0,
    "local-grad-sample-mode": "ghost",
    "local-clip": 0.5,
    "server-opt": "fedavg",
    "server-lr": 50.0,
    "learn-global-mean": False,
    "private-refit": False,
}
RUNS: dict[str, dict[str, Any]] = {
    "none": {**USER, "dp": "none"},
    "user-eps8": {**USER, "dp": "user", "user-epsilon": 8.0},
    "local-eps8": {**LOCAL, "dp": "local", "local-epsilon": 8.0},
    "user-eps1": {**USER, "dp": "user", "user-epsilon": 1.0},
    "user-eps8-no-canaries": {**USER, "dp": "user", "user-epsilon": 8.0, "audit-canaries": 0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, default=Path("runs/audit-bars"))
    parser.add_argument("--results", type=Path, default=Path("audit_bars.jsonl"))
    parser.add_argument("--only", nargs="*", default=list(RUNS))
    parser.add_argument(
        "--engine",
        choices=["flower", "direct"],
        default="flower",
        help="flower: Flower's simulation engine; direct: the same ServerApp and ClientApp "
        "called in this process (tests/audit/inprocess_grid.py), without Flower's transport",
    )
    args = parser.parse_args()

    from pollinate.audit.report import write_report
    from pollinate.simulations.engine import run_federation

    def simulate(settings: dict[str, Any]) -> None:
        if args.engine == "flower":
            run_federation(FederationConfig.from_mapping(settings))
            return
        import sys

        from flwr.supercore.task_identity import TaskIdentity

        sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "audit"))
        from inprocess_grid import run_in_process

        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
        run_in_process(settings)

    for name in args.only:
        run_dir = args.out / name
        settings = {
            **AUDIT,
            **RUNS[name],
            "data-dir": args.data_dir,
            "out": str(run_dir),
            "device-state-dir": str(run_dir / "devices"),
        }
        t0 = time.perf_counter()
        if not (run_dir / "metrics.json").exists():
            simulate(settings)
        run_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        baseline = args.out / "none" if name != "none" else None
        json_path, _ = write_report(run_dir, run_dir / "report", baseline=baseline)
        audit_s = time.perf_counter() - t0
        report = json.loads(json_path.read_text())
        row = {
            "run": name,
            "engine": args.engine,
            "date": time.strftime("%Y-%m-%d"),
            "settings": settings,
            "run_s": run_s,
            "audit_s": audit_s,
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "verdict": report["verdict"],
            "verdict_reason": report["verdict_reason"],
            "epsilon": {k: v.get("epsilon_recomputed") for k, v in report["layers"].items()},
            "empirical": {
                k: {
                    x: v.get(x)
                    for x in (
                        "canaries",
                        "epsilon_lower_bound",
                        "claimed_epsilon",
                        "passed",
                        "baseline",
                    )
                }
                for k, v in report["empirical"].items()
            },
            "membership": {
                k: {
                    x: v.get(x)
                    for x in ("auc", "tpr_at_1pct_fpr", "under_bound", "members", "non_members")
                }
                | {
                    "baseline": {
                        x: (v.get("baseline") or {}).get(x) for x in ("auc", "tpr_at_1pct_fpr")
                    }
                }
                for k, v in report["membership_inference"].items()
            },
            "utility": report["utility"]["final"],
            "segments": (report["utility"].get("segments") or {}).get("segments"),
        }
        with args.results.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: row[k] for k in ("run", "verdict", "run_s", "audit_s", "utility")}))


if __name__ == "__main__":
    main()
