"""Evaluate a finished simulation's run directory again, with standard errors.

    python simulations/benchmarks/rescore_run.py RUN_DIR [--part test] [--per-device FILE]
        [--private-scale S]

It rebuilds every simulated device from the run's ``config.json``, loads the run's final
global parameters (``global_params.npz``) and each device's latest private parameters
from its store (``device-state-dir``; a device that never trained gets the ClientApp's
seeded initial ones), and evaluates as the final Flower round does.
It prints the metrics, which must equal the run's ``metrics.json`` (a check of the run
directory), and their standard errors over users (:func:`standard_errors`), which runs
made before the server reported them lack. ``--per-device`` writes each device's metric
sums (JSON lines), for a paired comparison of two runs on the same users.
``--private-scale S`` multiplies each device's private vector (``user_interest`` or
``user_factors``) by S first: 0 removes it and measures what the global parameters carry
alone (``pollinate.simulations.centralized.rescore_centralized`` does the same for a
centralized run).

It needs the run's device stores on disk (``device-state-dir`` set, as ``pollinate
simulate`` does by default); private state kept in Flower's node state is gone with the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

from pollinate.client.app import fresh_model, private_refit
from pollinate.client.device_data import DeviceIndex
from pollinate.client.evaluation import evaluate_device
from pollinate.client.local_state import DiskStateStore
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import load_task_for
from pollinate.shared.threads import use_one_thread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--per-device", type=Path, help="write each device's sums here")
    parser.add_argument(
        "--private-scale", type=float, default=1.0, help="multiply the private vector by this"
    )
    args = parser.parse_args()
    run: Path = args.run_dir
    cfg = FederationConfig.from_mapping(json.loads((run / "config.json").read_text()))
    if cfg.device_state_dir is None:
        sys.exit(f"{run}: config.json names no device-state-dir; nothing to load")
    use_one_thread()
    task = load_task_for(cfg)
    index = DeviceIndex(task)
    with np.load(run / "global_params.npz") as saved:
        glob = {k: saved[k] for k in saved.files}
    flat = cfg.to_flat()
    refit = private_refit(flat)
    if refit is not None and args.private_scale != 1.0:
        sys.exit(
            f"{run}: this run refits the private parameters before it evaluates, which "
            "would undo --private-scale; leave it at 1"
        )
    parts: list[dict[str, float]] = []
    for u in range(index.n_devices):
        device = index.device(u)
        model = fresh_model(flat, device, u)
        model.load_global_state(glob)
        private = DiskStateStore(Path(cfg.device_state_dir), f"device-{u}").load(2**31)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in (private or {}).items():
                params[k].copy_(torch.as_tensor(v))
            for k, p in params.items():
                if k.startswith(model.LOCAL_PREFIXES[0]):
                    p.mul_(args.private_scale)
        parts.append(evaluate_device(model, device, args.part, private_refit=refit))
    if args.per_device is not None:
        with args.per_device.open("w") as f:
            for u, part in enumerate(parts):
                f.write(json.dumps({"device": u, **part}) + "\n")
    out = {
        "run": str(run),
        "part": args.part,
        "private_scale": args.private_scale,
        "devices": len(parts),
        "metrics": finalize(cfg.task, add_sums(parts)),
        "se": standard_errors(cfg.task, parts),
    }
    summary = run / "metrics.json"
    if args.part == "test" and summary.exists():
        out["reported"] = json.loads(summary.read_text()).get("final")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
