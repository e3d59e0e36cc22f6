"""Privacy-utility sweeps: the test metric against ε, for one DP layer at a time.

    # run a sweep (appends one JSON line per run to OUT.jsonl)
    python simulations/benchmarks/privacy_utility.py run --name ml100k-user \
        --layer user --epsilons 1,2,4,8,16,inf --out simulations/benchmarks/privacy_utility \
        --set dataset=ml-100k --set rounds=30 --set sample-rate=1 ...
    # draw every sweep of OUT.jsonl into OUT.png
    python simulations/benchmarks/privacy_utility.py plot

Each run is :func:`pollinate.simulations.fast.run_fast` (the device and server code of a
Flower round on the fast engine; ``pollinate sweep`` does the same in one command). ``inf`` is
the same configuration without the DP layer. For the user layer, ``--epsilons`` are
targets for the planned rounds (``--user-epsilon``, z calibrated with dp-accounting); for
the local layer, lifetime targets of every device (``--local-epsilon``, z calibrated per
device with dp-accounting's PLD under replace-one). The ε reported is the one the ledger
gives at the end of the run. Figures are scored by the simulation oracle (the
experimenter's own evaluation of every device, no device release).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

from pollinate.shared.config import FederationConfig
from pollinate.simulations.fast import run_fast
from pollinate.simulations.fast.engine import parse_config_value

REPO_ROOT = Path(__file__).resolve().parents[2]


def progress(entry: dict[str, Any]) -> None:
    """One line per round on stderr (evaluation rows only with ``--set eval-every=N``)."""
    print(json.dumps(entry), file=sys.stderr, flush=True)


def run_sweep(args: argparse.Namespace) -> None:
    base: dict[str, Any] = {"progress": False, "eval-every": 0}
    for item in args.set:
        key, _, val = item.partition("=")
        base[key] = parse_config_value(val)
    if base.get("dataset", "synthetic") != "synthetic":
        base.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for text in args.epsilons.split(","):
        target = math.inf if text == "inf" else float(text)
        values = dict(base, out=f"runs/privacy-utility/{args.name}-{text}")
        if math.isfinite(target):
            values["dp"] = args.layer
            values[f"{args.layer}-epsilon"] = target
        cfg = FederationConfig.from_mapping(values)
        t0 = time.perf_counter()
        run_fast(cfg)
        summary = json.loads((Path(cfg.out) / "metrics.json").read_text())
        privacy = summary["privacy"].get(args.layer, {})
        eps = privacy.get("epsilon_max" if args.layer == "local" else "epsilon", math.inf)
        row = {
            "name": args.name,
            "layer": args.layer,
            "target_epsilon": text,
            "epsilon": eps if math.isfinite(target) else None,
            "delta": privacy.get("delta"),
            "final": summary["final"],
            "privacy": summary["privacy"],
            "seconds": round(time.perf_counter() - t0, 1),
            "date": time.strftime("%Y-%m-%d"),
            "config": {k: v for k, v in values.items() if k not in ("progress", "data-dir")},
        }
        with out.with_suffix(".jsonl").open("a") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
        print(json.dumps({k: row[k] for k in ("name", "target_epsilon", "epsilon", "final")}))


def plot(args: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(args.out)
    rows = [json.loads(x) for x in out.with_suffix(".jsonl").read_text().splitlines() if x]
    for r in rows:
        r["metric"] = "rmse" if "rmse" in r["final"] else "ndcg@10"
        r["panel"] = f"{r['config'].get('dataset', 'synthetic')}, {r['metric']}"
    panels = sorted({r["panel"] for r in rows})
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    # {"ml-100k": {"centralized": 0.906}}: reference lines drawn on that dataset's panel
    refs = json.loads(args.references) if args.references else {}
    for ax, panel in zip(axes[0], panels, strict=True):
        mine = [r for r in rows if r["panel"] == panel]
        metric = mine[0]["metric"]
        for name in sorted({r["name"] for r in mine}):
            runs = [r for r in mine if r["name"] == name]
            dp = sorted((r for r in runs if r["epsilon"] is not None), key=lambda r: r["epsilon"])
            line = ax.plot(
                [r["epsilon"] for r in dp], [r["final"][metric] for r in dp], "o-", label=name
            )
            for r in runs:
                if r["epsilon"] is None:
                    ax.axhline(
                        r["final"][metric], ls="--", color=line[0].get_color(), lw=1,
                        label=f"{name}: no DP (federated)",
                    )  # fmt: skip
        dataset = mine[0]["config"].get("dataset", "synthetic")
        for (label, ref), color in zip(
            refs.get(dataset, {}).items(), ["black", "gray", "brown", "purple"], strict=False
        ):
            ax.axhline(ref, ls=":", color=color, lw=1.2, label=label)
        ax.set_title(panel)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("ε (at the run's δ; user level: per user, local: max over devices)")
        ax.set_ylabel(f"test {metric}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out.with_suffix('.png')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--name", required=True)
    r.add_argument("--layer", choices=["user", "local"], required=True)
    r.add_argument("--epsilons", default="1,2,4,8,16,inf")
    r.add_argument("--set", action="append", default=[], help="KEY=VALUE config key")
    r.add_argument("--out", default="simulations/benchmarks/privacy_utility")
    p = sub.add_parser("plot")
    p.add_argument("--out", default="simulations/benchmarks/privacy_utility")
    p.add_argument(
        "--references",
        default="",
        help='JSON {"ml-100k": {"centralized": 0.906}}: lines drawn on that dataset\'s panel',
    )
    args = parser.parse_args()
    run_sweep(args) if args.cmd == "run" else plot(args)


if __name__ == "__main__":
    main()
