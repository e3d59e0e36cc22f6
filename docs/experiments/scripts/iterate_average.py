"""Does averaging the server's iterates help? Train in process, keep every round's model,
then evaluate averages of the last rounds' global parameters.

    python docs/experiments/scripts/iterate_average.py train --out runs/avg/base \
        --dataset ml-100k --task ranking --model interest --rounds 20 --sample-rate 1
    python docs/experiments/scripts/iterate_average.py score runs/avg/base --ema 0.5,0.8,0.9

``train`` runs :func:`pollinate.simulations.fast.run_fast` (any config key as
``--key value``) and writes ``OUT/rounds/round-R.npz`` (global parameters after round R)
and ``OUT/private-R.npz`` (every device's private parameters after round R) for the
rounds given by ``--keep-private-from``. ``score`` evaluates, on the validation and test
rows of every device, the last iterate and exponential moving averages of the global
iterates (:class:`pollinate.server.averaging.IterateAverage`, the debiased average that
``--server-ema β`` releases, started at round ``--ema-start``), each with the devices'
last private parameters. It prints one JSON line per model; ``--per-device PREFIX``
writes each device's test sums to ``PREFIX-MODEL.jsonl`` and its validation sums to
``PREFIX-MODEL-valid.jsonl`` (for ``paired.py``). With ``--ema-start 1`` an
average's test figures are those of a run trained with ``--server-ema β`` (tested).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pollinate.client.app import private_refit
from pollinate.client.device_data import DeviceIndex, with_validation_in_training
from pollinate.client.evaluation import evaluate_device
from pollinate.server.averaging import IterateAverage
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.server.federation import build_run_model
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import catalog_of, load_task_for
from pollinate.shared.threads import use_one_thread
from pollinate.simulations.fast import run_fast
from pollinate.simulations.fast.engine import parse_config_value

REPO_ROOT = Path(__file__).resolve().parents[3]
Arrays = dict[str, np.ndarray]


def train(args: argparse.Namespace, rest: list[str]) -> None:
    out = Path(args.out)
    (out / "rounds").mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {"progress": False, "eval-every": args.log_every, "out": str(out)}
    it = iter(rest)
    for flag in it:
        values[flag.lstrip("-")] = parse_config_value(next(it))
    if values.get("dataset", "synthetic") != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    cfg = FederationConfig.from_mapping(values)
    (out / "config.json").write_text(json.dumps(cfg.to_flat(), indent=2))

    def keep(r: int, glob: Arrays) -> None:
        np.savez(out / "rounds" / f"round-{r}.npz", **glob)

    outcome = run_fast(cfg, on_round=keep, keep_private=True)
    # Every device's private parameters after the last round: its saved state, or the
    # seeded initial ones of a device that never trained (what the run evaluated).
    from pollinate.client.app import fresh_private_state
    from pollinate.client.device_data import DeviceIndex, with_validation_in_training
    from pollinate.client.local_state import DiskStateStore

    run_cfg = FederationConfig.from_mapping(json.loads((out / "config.json").read_text()))
    index = DeviceIndex(load_task_for(run_cfg))
    flat_cfg = run_cfg.to_flat()
    private: dict[str, np.ndarray] = {}
    for u in range(index.n_devices):
        state = DiskStateStore(Path(str(run_cfg.device_state_dir)), f"device-{u}").load(2**31)
        if state is None:
            device = index.device(u)
            if run_cfg.train_on_validation:
                device = with_validation_in_training(device)
            state = fresh_private_state(flat_cfg, device, u)
        private.update({f"{u}/{k}": a for k, a in state.items()})
    np.savez(out / f"private-{cfg.rounds}.npz", **private)
    print(json.dumps({"test": outcome["final"], "test_se": outcome["final_se"]}), flush=True)


def _load(path: Path) -> Arrays:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def score(args: argparse.Namespace) -> None:
    run = Path(args.run)
    cfg = FederationConfig.from_mapping(json.loads((run / "config.json").read_text()))
    use_one_thread()
    task = load_task_for(cfg)
    catalog = catalog_of(task.data)
    index = DeviceIndex(task)
    devices = [index.device(u) for u in range(index.n_devices)]
    if cfg.train_on_validation:
        devices = [with_validation_in_training(d) for d in devices]
    last = max(int(p.stem.split("-")[1]) for p in (run / "rounds").glob("round-*.npz"))
    private_round = args.private_round or last
    private_flat = _load(run / f"private-{private_round}.npz")
    refit = private_refit(cfg.to_flat())
    with torch.random.fork_rng():
        model = build_run_model(cfg, catalog)
    params = dict(model.named_parameters())

    def evaluate(glob: Arrays, part: str) -> tuple[dict[str, float], list[dict[str, float]]]:
        model.load_global_state(glob)
        parts = []
        for u, dev in enumerate(devices):
            with torch.no_grad():
                for k in model.local_parameter_names():
                    params[k].copy_(torch.from_numpy(private_flat[f"{u}/{k}"]))
            parts.append(evaluate_device(model, dev, part, private_refit=refit))
        return finalize(cfg.task, add_sums(parts)), parts

    candidates: list[tuple[str, Arrays]] = [("last", _load(run / "rounds" / f"round-{last}.npz"))]
    for beta in (float(b) for b in args.ema.split(",") if b):
        average = IterateAverage(beta)
        for r in range(args.ema_start, last + 1):
            average.update(_load(run / "rounds" / f"round-{r}.npz"))
        candidates.append((f"ema{beta}", average.value(candidates[0][1])))
    for name, glob in candidates:
        row: dict[str, Any] = {"model": name, "private_round": private_round}
        for part in ("valid", "test"):
            metrics, parts = evaluate(glob, part)
            row[part] = metrics
            row[f"{part}_se"] = standard_errors(cfg.task, parts)
            if args.per_device:
                suffix = "" if part == "test" else "-valid"
                path = Path(f"{args.per_device}-{name}{suffix}.jsonl")
                with path.open("w") as f:
                    for u, p in enumerate(parts):
                        f.write(json.dumps({"device": u, **p}) + "\n")
        print(json.dumps(row), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--out", required=True)
    t.add_argument("--log-every", type=int, default=5)
    t.add_argument("--keep-private-from", type=int, default=10**9)
    s = sub.add_parser("score")
    s.add_argument("run")
    s.add_argument("--ema", default="0.5,0.8,0.9")
    s.add_argument("--ema-start", type=int, default=1)
    s.add_argument("--private-round", type=int)
    s.add_argument(
        "--per-device",
        help="prefix of per-device sums files: PREFIX-MODEL.jsonl (test), PREFIX-MODEL-valid.jsonl",
    )
    args, rest = parser.parse_known_args()
    if args.command == "train":
        train(args, rest)
    else:
        score(args)


if __name__ == "__main__":
    main()
