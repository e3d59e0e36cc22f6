"""Cost of drawing local DP noise from ChaCha20 against torch's Mersenne Twister, per device
round of DP-SGD on real ML-100K devices, on one CPU thread.

    python simulations/benchmarks/noise_cost.py [--data-dir ../shared/data] [--reps 7]

Four noise paths, the rest of the round identical (Opacus per-example clipping, plain
SGD):

* ``openssl``: today's code. ``add_noise`` draws
  :func:`pollinate.shared.privacy.randomness.gaussian` (Box-Muller over ChaCha20
  keystream computed by OpenSSL through ``cryptography``, two pairs per coordinate,
  float64, cast to the gradient's float32) from a fresh
  :func:`~pollinate.shared.privacy.randomness.secure_generator`, which also draws the
  Poisson masks.
* ``randomgen``: the previous code. Four numpy ziggurat draws, summed and halved, over a
  numpy ``Generator`` on ``randomgen``'s ``ChaCha(rounds=20)`` keyed with 256 bits from
  :mod:`secrets`, which also draws the Poisson masks.
* ``mt-secure``: the default before ChaCha20 on a device (no noise seed): Opacus's own
  ``add_noise`` with ``secure_mode=True`` (a discarded draw, then four ``torch.normal``
  draws summed and halved) over a ``torch.Generator`` seeded with 63 bits from
  :mod:`secrets`; Poisson masks from a fresh ``secure_generator()``.
* ``mt``: the previous seeded-simulation path: Opacus's ``add_noise``, one
  ``torch.normal`` draw over the caller's ``torch.Generator``.

The other paths exist only here, by swapping the optimizer classes that
:func:`pollinate.client.dp_training._noisy_optimizers` returns.

Workload: ML-100K, rating task, fold 0, ``mf`` with k = 16 (1,682 × 17 item coordinates
noised every step, plus the user's and the global ones), mse, batch 32, one local epoch,
z = 1, C = 0.5, device learning rates of the ``mf`` rating defaults. Two clipping modes:
``hooks`` with λ = 0.05 (the default) and ``ghost`` with λ = 0 (what the local-DP results
in RESULTS.md use). Devices: the users at the 10th, 30th, 50th, 70th, 90th and 99th
percentile of the training-set size. The round's plan (its ε accounting, the same in
every path) is computed once per device before timing and reused, so a timed round is
the DP-SGD loop and the update; the accounting time is printed separately.

Every repetition runs every (device, path) once, in an order that rotates between
repetitions, so a slow spell on the machine hits every path alike. One warm-up round per
(device, path) first. Reported: the median ms per device round over repetitions, for each
device and path, and the ratios of each path to ``mt-secure`` (the cost over Opacus's
secure mode). A micro-benchmark of one item-table draw (1,682 × 17 coordinates) per path
comes first.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import opacus
import randomgen
import torch

from pollinate.client import dp_training
from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.dp_training import LocalDPConfig, train_device_dp
from pollinate.client.training import LocalTrainConfig
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.randomness import gaussian, secure_generator
from pollinate.shared.tasks import load_task

REPO_ROOT = Path(__file__).resolve().parents[2]
PERCENTILES = (10, 30, 50, 70, 90, 99)
PATHS = ("openssl", "randomgen", "mt-secure", "mt")
MODES = {"hooks": 0.05, "ghost": 0.0}  # clipping mode -> λ (ghost refuses λ > 0)
DIM = 16
BATCH = 32
CLIP = 0.5
Z = 1.0


def old_optimizers(secure: bool) -> tuple[type[Any], type[Any]]:
    """The optimizer classes with Opacus's own ``add_noise`` over a torch generator."""
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping

    plain, ghost = REAL_OPTIMIZERS()

    def old(cls: type[Any], base: type[Any]) -> type[Any]:
        class Old(cls):
            def __init__(self, optimizer: Any, **kw: Any) -> None:
                super().__init__(optimizer, **kw)
                self.generator = torch.Generator().manual_seed(secrets.randbits(63))
                self.secure_mode = secure

            add_noise = base.add_noise

        return Old

    return old(plain, DPOptimizer), old(ghost, DPOptimizerFastGradientClipping)


def randomgen_gaussian(rng: np.random.Generator, shape: tuple[int, ...], std: float) -> np.ndarray:
    """The previous noise of record: four numpy ziggurat draws, summed and halved."""
    total = rng.standard_normal(shape)
    for _ in range(3):
        total += rng.standard_normal(shape)
    total *= std / 2
    return total


def randomgen_generator() -> np.random.Generator:
    """The previous CSPRNG: randomgen's ChaCha20 keyed with 256 bits from the OS."""
    key = int.from_bytes(secrets.token_bytes(32), "little")
    return np.random.Generator(randomgen.ChaCha(key=key, rounds=20))


def randomgen_optimizers() -> tuple[type[Any], type[Any]]:
    """The optimizer classes with the previous ``add_noise``: :func:`randomgen_gaussian`."""
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def add_noise(self: Any) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            summed = p.summed_grad
            noise = randomgen_gaussian(self.noise_rng, tuple(summed.shape), std)
            noise_t = torch.from_numpy(noise).to(dtype=summed.dtype, device=summed.device)
            p.grad = (summed + noise_t).view_as(p)
            _mark_as_processed(p.summed_grad)

    plain, ghost = REAL_OPTIMIZERS()
    return (
        type("RandomgenDPOptimizer", (plain,), {"add_noise": add_noise}),
        type("RandomgenDPOptimizerFastGradientClipping", (ghost,), {"add_noise": add_noise}),
    )


def draw_costs(n_items: int, reps: int) -> str:
    """Median ms of one item-table draw (n_items × (k + 1) coordinates) per path, as
    ``add_noise`` makes it (float64 noise cast to a float32 tensor)."""
    shape, std = (n_items, DIM + 1), CLIP * Z
    new, old = secure_generator(), randomgen_generator()
    gen = torch.Generator().manual_seed(secrets.randbits(63))

    def mt_secure() -> torch.Tensor:
        torch.normal(0, std, shape, generator=gen)  # Opacus's discarded draw
        total = torch.zeros(shape)
        for _ in range(4):
            total += torch.normal(0, std, shape, generator=gen)
        return total / 2

    draws: dict[str, Callable[[], Any]] = {
        "openssl": lambda: torch.from_numpy(gaussian(new, shape, std)).float(),
        "randomgen": lambda: torch.from_numpy(randomgen_gaussian(old, shape, std)).float(),
        "mt-secure": mt_secure,
        "mt": lambda: torch.normal(0, std, shape, generator=gen),
    }
    times: dict[str, list[float]] = {p: [] for p in PATHS}
    for rep in range(-1, 20 * reps):  # one warm-up round, then interleaved
        for path in PATHS[rep % len(PATHS) :] + PATHS[: rep % len(PATHS)]:
            t0 = time.perf_counter()
            draws[path]()
            if rep >= 0:
                times[path].append(time.perf_counter() - t0)
    med = {p: 1e3 * statistics.median(t) for p, t in times.items()}
    cells = ", ".join(f"{p} {med[p]:.3f} ms" for p in PATHS)
    return f"one item-table draw ({shape[0]} × {shape[1]}), median of {20 * reps}: {cells}"


REAL_OPTIMIZERS: Callable[[], tuple[type[Any], type[Any]]] = dp_training._noisy_optimizers


def pick_devices(index: DeviceIndex) -> list[tuple[int, DeviceData]]:
    counts = np.array([len(index.partition.device(u).train) for u in range(index.n_devices)])
    order = np.argsort(counts, kind="stable")
    picked = []
    for p in PERCENTILES:
        user = int(order[min(len(order) - 1, round(p / 100 * (len(order) - 1)))])
        picked.append((user, index.device(user)))
    return picked


def header(args: argparse.Namespace, n_items: int) -> str:
    date = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cmd = shlex.join(["python", *sys.argv])
    return (
        f"{date} | {platform.platform()}, {cpu}, {os.cpu_count()} CPUs (load {load}), "
        f"torch threads {torch.get_num_threads()} | python {platform.python_version()}, "
        f"torch {torch.__version__}, opacus {opacus.__version__}, numpy {np.__version__}, "
        f"randomgen {randomgen.__version__} | ML-100K rating fold 0, mf {n_items} items × "
        f"k {DIM}, batch {BATCH}, 1 epoch, z={Z}, C={CLIP}, median of {args.reps} reps "
        f"after 1 warm-up | `{cmd}`"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--reps", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")

    index = DeviceIndex(load_task("ml-100k", task="rating", data_dir=args.data_dir))
    devices = pick_devices(index)
    n_items = devices[0][1].data.n_items
    print(header(args, n_items))
    print(draw_costs(n_items, args.reps))
    classes = {
        "openssl": REAL_OPTIMIZERS(),
        "randomgen": randomgen_optimizers(),
        "mt-secure": old_optimizers(True),
        "mt": old_optimizers(False),
    }

    # The plan (accounting) once per (device, mode), outside the timed rounds.
    real_plan = dp_training.plan_local_round
    plans: dict[tuple[int, str], Any] = {}
    plan_seconds: list[float] = []
    current: dict[str, Any] = {}

    def cached_plan(*a: Any, **kw: Any) -> Any:
        key = (current["user"], current["mode"])
        if key not in plans:
            t0 = time.perf_counter()
            plans[key] = real_plan(*a, **kw)
            plan_seconds.append(time.perf_counter() - t0)
        return plans[key]

    dp_training.plan_local_round = cached_plan

    def model() -> RecModel:
        return build_model(
            "mf", n_users=1, n_items=n_items, dim=DIM, global_mean=3.5,
            generator=torch.Generator().manual_seed(0),
        )  # fmt: skip

    def one_round(user: int, device: DeviceData, mode: str, path: str, rep: int) -> float:
        current.update(user=user, mode=mode)
        plain, ghost = classes[path]
        dp_training._noisy_optimizers = lambda: (plain, ghost)  # type: ignore[assignment]
        train = LocalTrainConfig(
            loss="mse", reg=MODES[mode], negatives=0, epochs=1, batch_size=BATCH,
            lr_global=0.01, lr_local=0.005, history_len=0,
        )  # fmt: skip
        dp = LocalDPConfig(
            clip_norm=CLIP, noise_multiplier=Z, target_epsilon=None, planned_rounds=10,
            delta=None, epsilon_budget=None, grad_sample_mode=mode,  # type: ignore[arg-type]
        )  # fmt: skip
        m, g = model(), torch.Generator().manual_seed(rep)
        noise_rng = randomgen_generator() if path == "randomgen" else secure_generator()
        t0 = time.perf_counter()
        out = train_device_dp(m, device, train, dp, [], g, noise_rng=noise_rng)
        seconds = time.perf_counter() - t0
        assert out.update is not None
        return seconds

    jobs = [(u, d, mode, path) for mode in MODES for u, d in devices for path in PATHS]
    times: dict[tuple[int, str, str], list[float]] = {}
    for u, d, mode, path in jobs:  # warm-up, and the plans
        one_round(u, d, mode, path, 10_000)
    for rep in range(args.reps):
        k = rep % len(jobs)
        for u, d, mode, path in jobs[k:] + jobs[:k]:
            times.setdefault((u, mode, path), []).append(one_round(u, d, mode, path, rep))
    dp_training._noisy_optimizers = REAL_OPTIMIZERS  # type: ignore[assignment]
    dp_training.plan_local_round = real_plan

    print(
        f"\naccounting (the plan, identical in every path, not in the times below): median "
        f"{1e3 * statistics.median(plan_seconds):.1f} ms per device round\n"
    )
    over = ("openssl", "randomgen", "mt")
    for mode in MODES:
        print(f"### {mode} (λ = {MODES[mode]:g})\n")
        print(
            "| device (pct) | n train | q | steps | "
            + " | ".join(f"{p} ms" for p in PATHS)
            + " | "
            + " | ".join(f"{p} / mt-secure" for p in over)
            + " |"
        )
        print("|---" * (4 + len(PATHS) + len(over)) + "|")
        totals = dict.fromkeys(PATHS, 0.0)
        lines: list[tuple[str, dict[str, float]]] = []
        for (u, d), pct in zip(devices, PERCENTILES, strict=True):
            med = {p: statistics.median(times[(u, mode, p)]) for p in PATHS}
            for p in PATHS:
                totals[p] += med[p]
            plan = plans[(u, mode)]
            lines.append(
                (
                    f"| {u} (p{pct}) | {len(d.split.train)} | {plan.sample_rate:g} | {plan.steps}",
                    med,
                )
            )
        lines.append(("| all six (sum of medians) | | |", totals))
        for label, med in lines:
            print(
                label
                + " | "
                + " | ".join(f"{1e3 * med[p]:.1f}" for p in PATHS)
                + " | "
                + " | ".join(f"{med[p] / med['mt-secure']:.3f}" for p in over)
                + " |"
            )
        print()


if __name__ == "__main__":
    main()
