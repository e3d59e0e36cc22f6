"""Score a finished run's final model again, with each device adapting it locally first.

    python docs/experiments/scripts/local_adaptation.py RUN_DIR --epochs E [--lr-scale S]
        [--part test] [--shard I/N] [--per-device FILE]

What ``--adapt-epochs E --adapt-lr-scale S`` does in a run's evaluations
(pollinate.client.adaptation): each device trains a copy of its whole local model (the
final global parameters and its private ones) for ``E`` epochs on the rows it trained on
during the run (with ``--train-on-validation``, its validation row too) at ``S`` times
its rates, with the generator the ClientApp's final evaluation uses, and scores with the
copy. So a run trained without the option can be scored with it, and a run trained with
it is reproduced (a check of its ``metrics.json``). ``--epochs 0`` scores the model as it
is, as ``rescore_run.py`` does.

RUN_DIR is a ``pollinate simulate`` run directory (final ``global_params.npz`` and the
device stores under ``device-state-dir``) or an ``iterate_average.py train`` directory
(its last ``rounds/round-R.npz`` and ``private-R.npz``). ``--shard I/N`` scores devices
``u`` with ``u % N == I`` (one process a core); ``--merge`` adds shard files up.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from pollinate.client.adaptation import LocalAdaptation, adapt_locally
from pollinate.client.app import device_generator, fresh_model, private_refit, train_config
from pollinate.client.device_data import DeviceIndex, with_validation_in_training
from pollinate.client.evaluation import evaluate_device
from pollinate.client.local_state import DiskStateStore
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import load_task_for
from pollinate.shared.threads import use_one_thread


def _summary(task: str, parts: list[dict[str, float]]) -> dict[str, object]:
    return {
        "devices": len(parts),
        "metrics": finalize(task, add_sums(parts)),
        "se": standard_errors(task, parts),
    }


def _load_run(
    run: Path, cfg: FederationConfig
) -> tuple[dict[str, np.ndarray], Callable[[int], dict[str, np.ndarray] | None]]:
    """The run's final global parameters, and a loader of device ``u``'s private ones."""
    rounds = sorted(run.glob("rounds/round-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    if rounds:
        last = int(rounds[-1].stem.split("-")[1])
        with np.load(rounds[-1]) as saved:
            glob = {k: saved[k] for k in saved.files}
        private_file = run / f"private-{last}.npz"
        if not private_file.exists():
            sys.exit(f"{run}: no {private_file.name} beside its last iterate (round {last})")
        with np.load(private_file) as saved:
            flat = {k: saved[k] for k in saved.files}

        def from_file(u: int) -> dict[str, np.ndarray] | None:
            prefix = f"{u}/"
            own = {k[len(prefix) :]: v for k, v in flat.items() if k.startswith(prefix)}
            return own or None

        return glob, from_file
    if cfg.device_state_dir is None:
        sys.exit(f"{run}: neither rounds/ nor a device-state-dir in config.json; nothing to load")
    with np.load(run / "global_params.npz") as saved:
        glob = {k: saved[k] for k in saved.files}
    root = Path(cfg.device_state_dir)
    return glob, lambda u: DiskStateStore(root, f"device-{u}").load(2**31)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--lr-scale", type=float, default=0.5)
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--shard", default="0/1", help="I/N: devices with u %% N == I")
    parser.add_argument("--per-device", type=Path, help="write each device's sums here")
    parser.add_argument("--merge", type=Path, nargs="+", help="add up per-device shard files")
    args = parser.parse_args()
    run: Path = args.run_dir
    cfg = FederationConfig.from_mapping(json.loads((run / "config.json").read_text()))
    if args.merge:
        parts = [
            json.loads(line) for f in args.merge for line in f.read_text().splitlines() if line
        ]
        parts.sort(key=lambda p: p["device"])
        rows = [{k: v for k, v in p.items() if k != "device"} for p in parts]
        if args.per_device is not None:
            args.per_device.write_text("".join(json.dumps(p) + "\n" for p in parts))
        print(json.dumps({"run": str(run), **_summary(cfg.task, rows)}, indent=2))
        return
    shard, n_shards = (int(x) for x in args.shard.split("/"))
    if not 0 <= shard < n_shards:
        sys.exit(f"--shard {args.shard}: need 0 <= I < N")
    if args.epochs < 0 or not args.lr_scale > 0:
        sys.exit("--epochs must be >= 0 and --lr-scale > 0")
    use_one_thread()
    task = load_task_for(cfg)
    index = DeviceIndex(task)
    glob, private_of = _load_run(run, cfg)
    flat = cfg.to_flat()
    refit = private_refit(flat)
    tcfg = train_config(flat)
    adapt = LocalAdaptation(args.epochs, args.lr_scale) if args.epochs else None
    parts: list[dict[str, float]] = []
    for u in range(shard, index.n_devices, n_shards):
        device = index.device(u)
        model = fresh_model(flat, device, u)
        model.load_global_state(glob)
        private = private_of(u)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in (private or {}).items():
                params[k].copy_(torch.as_tensor(v))
        if adapt is not None:
            trained_on = with_validation_in_training(device) if cfg.train_on_validation else device
            # The final evaluation's generator in the ClientApp (round R + 1, salt 1).
            gen = device_generator(flat, cfg.rounds + 1, u, salt=1)
            adapt_locally(model, trained_on, tcfg, adapt, gen)
        parts.append(
            {"device": u, **evaluate_device(model, device, args.part, private_refit=refit)}
        )
    if args.per_device is not None:
        args.per_device.write_text("".join(json.dumps(p) + "\n" for p in parts))
    rows = [{k: v for k, v in p.items() if k != "device"} for p in parts]
    print(
        json.dumps({"run": str(run), "epochs": args.epochs, **_summary(cfg.task, rows)}, indent=2)
    )


if __name__ == "__main__":
    main()
