"""Training throughput of the fast engine against Flower's, side by side in one run.

    python simulations/benchmarks/fast_throughput.py --dataset ml-100k --rounds 5 \
        --sample-rate 0.5 [--dp local --local-noise 1.0] [--engines fast,flower,fast]

Runs the same configuration (ML-100K rating ``mf`` by default, no evaluation during
training) on each engine and prints one JSON line per engine: devices trained per second
of training-round wall time (``Σ sampled / Σ train_wall_s`` of ``metrics.jsonl``), devices
trained per CPU-second of the whole process tree (driver, Ray, workers) during the
training rounds, the whole run's wall time and the 1-minute load average before and
after; then each fast run's ratios to the mean Flower figures of the same invocation.

On a machine shared with other jobs the wall-clock ratio measures each engine's share of
the CPUs as much as its work (Flower runs more busy processes than the fast engine's
shards); the CPU-second ratio is the work alone. Both are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from pollinate.shared.config import FederationConfig
from pollinate.simulations.fast.engine import config_flags

REPO_ROOT = Path(__file__).resolve().parents[2]
TICK = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """User + system CPU seconds of ``root`` and its live descendants, plus what their
    reaped children used (Linux /proc)."""
    children: dict[int, list[int]] = {}
    ticks: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(entry)
        children.setdefault(int(fields[1]), []).append(pid)
        ticks[pid] = sum(int(f) for f in fields[11:15])
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += ticks.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total / TICK


METHOD = "train_round"


class RoundClock:
    """The process tree's CPU seconds spent inside the server's training rounds: the
    server's ``train_round`` (Flower's and the fast engine's, both run in this process)
    is wrapped to read the tree's CPU time when it starts and ends."""

    def __init__(self) -> None:
        self.cpu_s = 0.0

    def __enter__(self) -> RoundClock:
        from pollinate.server.federation import Server
        from pollinate.simulations.fast.server import FastServer

        self.saved = [(cls, cls.__dict__[METHOD]) for cls in (Server, FastServer)]
        for cls, original in self.saved:
            setattr(cls, METHOD, self._wrap(original))
        return self

    def _wrap(self, original: Any) -> Any:
        def timed(server: Any, *args: Any, **kwargs: Any) -> Any:
            start = tree_cpu_seconds(os.getpid())
            try:
                return original(server, *args, **kwargs)
            finally:
                self.cpu_s += tree_cpu_seconds(os.getpid()) - start

        return timed

    def __exit__(self, *exc: object) -> None:
        for cls, original in self.saved:
            setattr(cls, METHOD, original)


def run(engine: str, values: dict[str, Any]) -> dict[str, Any]:
    cfg = FederationConfig.from_mapping(values)
    t0 = time.perf_counter()
    clock = RoundClock().__enter__()
    try:
        _run(engine, cfg)
    finally:
        clock.__exit__()
    wall = time.perf_counter() - t0
    return summarize(engine, cfg, wall, clock.cpu_s)


def _run(engine: str, cfg: FederationConfig) -> None:
    if engine == "fast":
        from pollinate.simulations.fast import run_fast

        run_fast(cfg)
    else:
        from pollinate.simulations.engine import run_federation

        run_federation(cfg)


def summarize(engine: str, cfg: FederationConfig, wall: float, cpu_s: float) -> dict[str, Any]:
    out = Path(cfg.out)
    rounds = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = [r for r in rounds if r["round"] >= 1]
    sampled = sum(r["sampled"] for r in rounds)
    train_s = sum(r["train_wall_s"] for r in rounds)
    summary = json.loads((out / "metrics.json").read_text())
    return {
        "engine": engine,
        "devices_trained": sampled,
        "train_s": round(train_s, 2),
        "devices_per_s": round(sampled / train_s, 1),
        "train_cpu_s": round(cpu_s, 2),
        "devices_per_cpu_s": round(sampled / cpu_s, 1) if cpu_s > 0 else None,
        "run_wall_s": round(wall, 1),
        "final": summary["final"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", default="fast,flower,fast")
    parser.add_argument("--out", default="runs/fast-throughput")
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {
        "dataset": "ml-100k",
        "rounds": 5,
        "sample-rate": 0.5,
        "eval-every": 0,
        "progress": False,
        "seed": 0,
    }
    values.update(config_flags(rest))
    if values["dataset"] != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    rows: list[dict[str, Any]] = []
    for i, engine in enumerate(args.engines.split(",")):
        out = Path(args.out) / f"{i}-{engine}"
        load_before = os.getloadavg()[0]
        row = run(engine, {**values, "out": str(out), "device-state-dir": str(out / "devices")})
        row["load_average_1min"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
        rows.append(row)
        print(json.dumps(row), flush=True)
    # Each fast run against the mean of the Flower runs of the same invocation (list
    # Flower between two fast runs, or the reverse, to see the load drift).
    flower = [r for r in rows if r["engine"] == "flower"]
    if flower:
        wall = sum(r["devices_per_s"] for r in flower) / len(flower)
        cpu = sum(r["devices_per_cpu_s"] for r in flower) / len(flower)
        for row in rows:
            if row["engine"] == "fast":
                ratios = {
                    "wall_ratio_to_flower": round(row["devices_per_s"] / wall, 2),
                    "cpu_ratio_to_flower": round(row["devices_per_cpu_s"] / cpu, 2),
                }
                print(json.dumps({"engine": "fast", **ratios}), flush=True)


if __name__ == "__main__":
    main()
