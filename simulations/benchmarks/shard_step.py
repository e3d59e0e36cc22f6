"""Milliseconds per device of one fast-engine shard, played in this process (no Ray).

    python simulations/benchmarks/shard_step.py --data-dir ../shared/data \
        [--rounds 5 --sample-rate 0.5 --shards 2 --KEY VALUE ...] [--profile ROUND]

Builds the run's configuration, deals the devices to ``--shards`` shards as the fast
engine does and plays the first shard's sampled devices round after round with
:meth:`pollinate.simulations.fast.shard.Shard.train` (the device step, both allow-list
checks, the log line and the running sum), from the initial global parameters. Prints
the wall and CPU milliseconds per device of each round; ``--profile R`` prints cProfile's
top functions for round R. Extra ``--KEY VALUE`` pairs are ``pollinate simulate`` options
(``--dp local --local-noise 1.0``). To compare two versions of the code, run it with each
version's source folders first on ``PYTHONPATH``.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.server.federation import DEVICE_KEYS, initial_global_state
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import catalog_of, load_task_for
from pollinate.shared.threads import use_one_thread
from pollinate.shared.wire import spec_of
from pollinate.simulations.engine import simulation_policy
from pollinate.simulations.fast.engine import config_flags
from pollinate.simulations.fast.shard import Shard, ShardSpec

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sample-rate", type=float, default=0.5)
    parser.add_argument("--shards", type=int, default=2)
    parser.add_argument("--profile", type=int, default=0, help="profile this round")
    parser.add_argument("--out", default="runs/shard-step")
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {"dataset": "ml-100k", "out": args.out, "progress": False}
    values.update(config_flags(rest))
    if values["dataset"] != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    use_one_thread()  # as a Ray worker does
    cfg = FederationConfig.from_mapping(values)
    cfg = cfg.model_copy(update={"device_state_dir": str(Path(cfg.out) / "devices")})
    task = load_task_for(cfg)
    params = initial_global_state(cfg, catalog_of(task.data))
    mine = tuple(range(0, task.data.n_users, args.shards))
    shard = Shard(
        ShardSpec(mine, replace(simulation_policy(cfg), run_ledger=None), spec_of(params),
                  cfg.dp, cfg.task, task.data.item_genres is not None,
                  cfg.user_clip if cfg.user_dp else None, cfg.aggregation)
    )  # fmt: skip
    flat = cfg.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    try:
        shard.enroll(dict(config, round=0))
    except TypeError:  # a version of the code before shards warmed up at enrolment
        shard.enroll()
    rng = np.random.default_rng(0)
    profile = cProfile.Profile()
    for round_ in range(1, args.rounds + 1):
        parts = [p for p in mine if rng.random() < args.sample_rate]
        if round_ == args.profile:
            profile.enable()
        wall, cpu = time.perf_counter(), time.process_time()
        shard.train(round_, params, dict(config, round=round_), parts)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        profile.disable()
        n = max(len(parts), 1)
        print(f"round {round_}: {len(parts)} devices, {wall / n * 1e3:.2f} ms/device wall, "
              f"{cpu / n * 1e3:.2f} ms/device CPU")  # fmt: skip
    if args.profile:
        pstats.Stats(profile).sort_stats("tottime").print_stats(30)


if __name__ == "__main__":
    main()
