"""Evaluate a centralized model through the federated devices, user by user.

    python docs/experiments/scripts/central_per_device.py CENTRAL_OUT RUN_DIR \
        [--part test] [--per-device FILE] [--private-scale S] [--adapt-epochs E --adapt-lr-scale S]

``CENTRAL_OUT`` is a ``pollinate centralized --out`` directory (``model.npz``); RUN_DIR
a federated run directory of the same dataset, task and architecture (its
``config.json`` defines the devices). Every device gets the centralized model's global
parameters and its own user's rows of the private parameters, and evaluates exactly as
a federated device does. The totals must equal the centralized run's own test figures
(a check that the two evaluations agree), and ``--per-device`` writes the same per-user
sums as ``rescore_run.py --per-device``, so that ``paired.py`` compares the federated
and the centralized model on the same users.

``--adapt-epochs E`` has every device adapt its copy of the centralized model locally
before it scores, as ``pollinate simulate --adapt-epochs E`` does with a federated model
(pollinate.client.adaptation; the device recipe of RUN_DIR's config at
``--adapt-lr-scale`` times its rates, on the rows RUN_DIR's devices train on, with the
generator of the ClientApp's final evaluation): what the same on-device step is worth to
the centralized model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from pollinate.client.adaptation import LocalAdaptation, adapt_locally
from pollinate.client.app import device_generator, fresh_model, train_config
from pollinate.client.device_data import DeviceIndex, with_validation_in_training
from pollinate.client.evaluation import evaluate_device
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.shared.tasks import load_task_for
from pollinate.shared.threads import use_one_thread
from pollinate.simulations.centralized import load_user_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("central", type=Path)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--per-device", type=Path, help="write each device's sums here")
    parser.add_argument("--private-scale", type=float, default=1.0)
    parser.add_argument("--adapt-epochs", type=int, default=0)
    parser.add_argument("--adapt-lr-scale", type=float, default=0.5)
    args = parser.parse_args()
    cfg = FederationConfig.from_mapping(json.loads((args.run_dir / "config.json").read_text()))
    use_one_thread()
    task = load_task_for(cfg)
    index = DeviceIndex(task)
    with np.load(args.central / "model.npz") as saved:
        weights = {k: saved[k] for k in saved.files}
    flat = cfg.to_flat()
    adapt = LocalAdaptation(args.adapt_epochs, args.adapt_lr_scale) if args.adapt_epochs else None
    parts: list[dict[str, float]] = []
    for u in range(index.n_devices):
        device = index.device(u)
        model = fresh_model(flat, device, u)
        try:
            load_user_rows(model, weights, u, args.private_scale)
        except ConfigError as e:
            sys.exit(f"{args.central}: {e}")
        if adapt is not None:
            trained_on = with_validation_in_training(device) if cfg.train_on_validation else device
            gen = device_generator(flat, cfg.rounds + 1, u, salt=1)
            adapt_locally(model, trained_on, train_config(flat), adapt, gen)
        parts.append(evaluate_device(model, device, args.part))
    if args.per_device is not None:
        with args.per_device.open("w") as f:
            for u, part in enumerate(parts):
                f.write(json.dumps({"device": u, **part}) + "\n")
    out = {
        "central": str(args.central),
        "part": args.part,
        "private_scale": args.private_scale,
        "adapt_epochs": args.adapt_epochs,
        "devices": len(parts),
        "metrics": finalize(cfg.task, add_sums(parts)),
        "se": standard_errors(cfg.task, parts),
    }
    report = json.loads((args.central / "metrics.json").read_text())
    if args.part == "test":
        out["reported"] = report.get("final")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
