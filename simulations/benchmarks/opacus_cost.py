"""Cost of Opacus DP-SGD per device round against non-private training, on one CPU thread.

    python simulations/benchmarks/opacus_cost.py [--items 10000] [--dim 16] [--reps 10]

One synthetic device (``rating`` task, ``mse`` loss) and an ``mf`` model whose item table
has ``--items`` rows of ``--dim`` floats; batch size 32, one local epoch. Three device
sizes, 15, 64 and 150 training rows: the user of the synthetic dataset (1,000 users)
with the fewest training rows not below the size, cut to exactly that many (the
generator's power-law activity need not give an exact count). For every size it times,
as the median of ``--reps`` repetitions after one warm-up, each on a freshly built model
(same seed):

* ``plain``: :func:`~pollinate.client.training.train_device`, shuffled batches of 32;
* ``hooks``: :func:`~pollinate.client.dp_training.train_device_dp` with Opacus's
  per-example gradients, weight decay (``reg``) 0 and 0.05 (the noise source is measured
  by ``noise_cost.py``);
* ``ghost``: ghost clipping, reg 0 (it takes reg > 0 too since ``mf`` computes its
  penalty from the score's lookups; not re-measured).

DP rounds use z = 1, C = 1 and an empty accountant history; their Poisson rate q and
step count come from :func:`~pollinate.client.dp_training.plan_local_round`
(q = min(B, n/2)/n rounded up, steps = ⌈1/q⌉). Times are wall-clock around the call
(planning and accounting included), excluding the model build.

Memory. The per-example column is ``DPTrainOutcome.peak_grad_sample_bytes``: the largest,
over a round's steps, total size of the per-example gradients Opacus held (hooks: dense
``batch × n_items × dim`` for the item table), or of the per-example norms (ghost);
median (max) over repetitions, since the Poisson batch size varies. This is the number
to rely on. The ``ΔRSS`` column is the growth of the process's peak resident set
(``getrusage`` ``ru_maxrss``) over that configuration's runs: a high-water mark, so it is
0 whenever an earlier configuration already reached more, and it depends on the
allocator returning memory. Coarse; configurations run in increasing expected memory
(sizes ascending; plain, ghost, hooks) so that it says something at all.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import resource
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import opacus
import torch

from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.dp_training import LocalDPConfig, train_device_dp
from pollinate.client.training import LocalTrainConfig, train_device
from pollinate.shared.data.splits import Split
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.tasks import load_task

SIZES = (15, 64, 150)
BATCH = 32
SYNTHETIC_USERS = 1000
MB = 1e6


@dataclass(frozen=True)
class Config:
    mode: str  # "plain", "hooks" or "ghost"
    reg: float

    @property
    def label(self) -> str:
        if self.mode == "plain":
            return f"plain (reg {self.reg:g})"
        return f"{self.mode} (reg {self.reg:g})"


# Increasing expected memory, so that the ΔRSS column means something (module doc).
CONFIGS = (
    Config("plain", 0.0),
    Config("ghost", 0.0),
    Config("hooks", 0.0),
    Config("hooks", 0.05),
)


@dataclass(frozen=True)
class Row:
    n: int
    user: int
    q: str
    steps: int
    config: Config
    ms: float
    ms_min: float
    grad_mb: float | None
    grad_mb_max: float | None
    rss_mb: float


def pick_devices(index: DeviceIndex, sizes: tuple[int, ...]) -> list[tuple[int, DeviceData]]:
    """For each size, the user with the fewest training rows not below it, cut to it."""
    counts = np.array([len(index.partition.device(u).train) for u in range(index.n_devices)])
    out = []
    for size in sizes:
        if not (counts >= size).any():
            sys.exit(f"no synthetic user has {size} training rows; raise SYNTHETIC_USERS")
        user = int(np.argmin(np.where(counts >= size, counts, np.iinfo(counts.dtype).max)))
        device = index.device(user)
        s = device.split
        out.append((user, replace(device, split=Split(s.train[:size], s.valid, s.test))))
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB  # Linux: KiB


def run_config(
    device: DeviceData, cfg: Config, n_items: int, dim: int, reps: int
) -> tuple[list[float], list[int], int, float, float]:
    """Time ``reps`` rounds (after a warm-up); return (seconds, grad bytes, steps, q, ΔRSS)."""
    train = LocalTrainConfig(
        loss="mse",
        reg=cfg.reg,
        negatives=0,
        epochs=1,
        batch_size=BATCH,
        lr_global=0.05,
        lr_local=0.05,
        history_len=0,
    )
    dp = LocalDPConfig(
        clip_norm=1.0,
        noise_multiplier=1.0,
        target_epsilon=None,
        planned_rounds=1,
        delta=None,
        epsilon_budget=None,
        grad_sample_mode="ghost" if cfg.mode == "ghost" else "hooks",
    )

    def model() -> RecModel:
        return build_model(
            "mf",
            n_users=1,
            n_items=n_items,
            dim=dim,
            global_mean=3.0,
            generator=torch.Generator().manual_seed(0),
        )

    one_round: Callable[[RecModel, torch.Generator], tuple[int, int, float]]
    if cfg.mode == "plain":
        n = len(device.split.train)
        plain_steps = math.ceil(n / BATCH)

        def one_round(m: RecModel, g: torch.Generator) -> tuple[int, int, float]:
            train_device(m, device, train, g)
            return 0, plain_steps, min(BATCH, n) / n

    else:

        def one_round(m: RecModel, g: torch.Generator) -> tuple[int, int, float]:
            out = train_device_dp(m, device, train, dp, [], g)
            assert out.update is not None
            return out.peak_grad_sample_bytes, out.plan.steps, out.plan.sample_rate

    one_round(model(), torch.Generator().manual_seed(10_000))  # warm-up
    rss0 = peak_rss_mb()
    seconds, grad_bytes = [], []
    steps, q = 0, 0.0
    for rep in range(reps):
        m, g = model(), torch.Generator().manual_seed(rep)
        t0 = time.perf_counter()
        peak, steps, q = one_round(m, g)
        seconds.append(time.perf_counter() - t0)
        grad_bytes.append(peak)
    return seconds, grad_bytes, steps, q, peak_rss_mb() - rss0


def header(n_items: int, dim: int, reps: int) -> str:
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cmd = shlex.join(["python", *sys.argv])
    return (
        f"{date} | {platform.platform()}, {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs (load {load}), torch threads {torch.get_num_threads()} | "
        f"python {platform.python_version()}, torch {torch.__version__}, "
        f"opacus {opacus.__version__} | mf {n_items} items × dim {dim}, batch {BATCH}, "
        f"1 epoch, mse, z=1, C=1, median of {reps} reps after 1 warm-up | `{cmd}`"
    )


def table(rows: list[Row]) -> str:
    lines = [
        "| n | user | q | steps | mode | ms/round (median) | ms (min) | × plain "
        "| per-sample grad MB, median (max) | ΔRSS MB |",
        "|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|",
    ]
    plain = {r.n: r.ms for r in rows if r.config.mode == "plain"}
    for r in rows:
        if r.grad_mb is None or r.grad_mb_max is None:
            grad = "—"
        else:
            note = " (norms)" if r.config.mode == "ghost" else ""
            grad = f"{r.grad_mb:.3g} ({r.grad_mb_max:.3g}){note}"
        lines.append(
            f"| {r.n} | {r.user} | {r.q} | {r.steps} | {r.config.label} | {r.ms:.1f} "
            f"| {r.ms_min:.1f} | {r.ms / plain[r.n]:.1f} | {grad} | {r.rss_mb:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=10_000, help="rows of the item table")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

    task = load_task(
        "synthetic", task="rating", synthetic_users=SYNTHETIC_USERS, synthetic_items=args.items
    )
    devices = pick_devices(DeviceIndex(task), SIZES)
    rows = []
    for user, device in devices:
        n = len(device.split.train)
        for cfg in CONFIGS:
            seconds, grad_bytes, steps, q, rss = run_config(
                device, cfg, args.items, args.dim, args.reps
            )
            dp = cfg.mode != "plain"
            rows.append(
                Row(
                    n=n,
                    user=user,
                    q=f"{q:.3g}" if dp else f"({q:.3g})",
                    steps=steps,
                    config=cfg,
                    ms=1e3 * statistics.median(seconds),
                    ms_min=1e3 * min(seconds),
                    grad_mb=statistics.median(grad_bytes) / MB if dp else None,
                    grad_mb_max=max(grad_bytes) / MB if dp else None,
                    rss_mb=rss,
                )
            )
    print(header(args.items, args.dim, args.reps))
    print()
    print(table(rows))
    print()
    print(
        "q in parentheses: plain training's batch fraction min(B, n)/n (shuffled "
        "batches, not sampled). "
        "Per-sample MB: DPTrainOutcome.peak_grad_sample_bytes (hooks: per-example "
        "gradients; ghost: per-example norms). ΔRSS: growth of the process's peak RSS "
        "(ru_maxrss) over the cell, a coarse high-water mark."
    )


if __name__ == "__main__":
    main()
