"""Federated training without Flower, for tuning: the same device and server code, one loop.

    python simulations/benchmarks/tune_inprocess.py --dataset ml-100k --rounds 60 \
        --set lr-local=0.005 --set server-lr=0.3 ...

It calls exactly what a Flower round calls (``train_device`` and ``evaluate_device`` on
each sampled device, the equal-weight mean and the server optimizer) but skips messaging,
so a round over ML-100K takes seconds instead of half a minute. Use it to choose
settings on validation data; measure the chosen ones with ``pollinate simulate``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pollinate.client.device_data import DeviceIndex
from pollinate.client.evaluation import evaluate_device
from pollinate.client.training import LocalTrainConfig, train_device
from pollinate.server.aggregate import mean_update
from pollinate.server.evaluation import add_sums, finalize
from pollinate.server.federation import initial_global_state
from pollinate.server.optimizers import make_server_optimizer
from pollinate.server.sampling import poisson_sample
from pollinate.shared.config import FederationConfig
from pollinate.shared.models.base import build_model
from pollinate.shared.tasks import catalog_of, load_task_for

REPO_ROOT = Path(__file__).resolve().parents[2]


def _value(text: str) -> Any:
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def run(cfg: FederationConfig, log_every: int) -> list[dict[str, Any]]:
    torch.set_num_threads(1)
    task = load_task_for(cfg)
    catalog = catalog_of(task.data)
    index = DeviceIndex(task)
    devices = [index.device(u) for u in range(index.n_devices)]
    midpoint = catalog.rating_midpoint
    model = build_model(
        cfg.model,
        n_users=1,
        n_items=catalog.n_items,
        dim=cfg.embedding_dim,
        item_genres=catalog.item_genres,
        **({"global_mean": midpoint} if cfg.model == "mf" else {}),
        **({"history_len": cfg.history_len} if cfg.model == "interest" else {}),
    )
    local_names = model.local_parameter_names()
    params = dict(model.named_parameters())
    private: dict[int, dict[str, torch.Tensor]] = {}
    init_gen = torch.Generator().manual_seed(cfg.seed + 1)
    for u in range(len(devices)):
        private[u] = {
            k: torch.randn(params[k].shape, generator=init_gen) * 0.1
            if "factors" in k
            else torch.zeros(params[k].shape)
            for k in local_names
        }
    glob = initial_global_state(cfg, catalog)
    opt = make_server_optimizer(cfg.server_opt, cfg.effective_server_lr)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    train_cfg = LocalTrainConfig(
        loss=cfg.effective_loss,
        reg=cfg.weight_decay,
        negatives=cfg.negatives,
        epochs=cfg.local_epochs,
        batch_size=cfg.batch_size,
        lr_global=cfg.lr_global,
        lr_local=cfg.lr_local,
        history_len=cfg.history_len,
    )

    def load(u: int) -> None:
        model.load_global_state(glob)
        with torch.no_grad():
            for k in local_names:
                params[k].copy_(private[u][k])

    def evaluate(part: str) -> dict[str, float]:
        sums = []
        for u, dev in enumerate(devices):
            load(u)
            sums.append(evaluate_device(model, dev, part))
        return finalize(cfg.task, add_sums(sums))

    history = [{"round": 0, "valid": evaluate("valid")}]
    print(json.dumps(history[-1]), flush=True)
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        sampled = poisson_sample(list(range(len(devices))), cfg.sample_rate, rng)
        updates, losses = [], []
        for u in sampled:
            load(u)
            out = train_device(model, devices[u], train_cfg, gen)
            private[u] = {k: params[k].detach().clone() for k in local_names}
            updates.append(out.update)
            losses.append(out.loss)
        if updates:
            glob = opt.step(glob, mean_update(updates, list(glob)))
        entry: dict[str, Any] = {
            "round": r,
            "train_loss": float(np.mean(losses)) if losses else None,
            "s": round(time.perf_counter() - t0, 2),
        }
        if r % log_every == 0 or r == cfg.rounds:
            entry["valid"] = evaluate("valid")
            if r == cfg.rounds:
                entry["test"] = evaluate("test")
            print(json.dumps(entry), flush=True)
        history.append(entry)
    return history


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE config key")
    parser.add_argument("--log-every", type=int, default=5)
    args, rest = parser.parse_known_args()
    values: dict[str, Any] = {"progress": False}
    it = iter(rest)
    for flag in it:
        values[flag.lstrip("-")] = _value(next(it))
    for item in args.set:
        key, _, val = item.partition("=")
        values[key] = _value(val)
    if values.get("dataset", "synthetic") != "synthetic":
        values.setdefault("data-dir", str(REPO_ROOT.parent / "shared" / "data"))
    cfg = FederationConfig.from_mapping(values)
    print(json.dumps({k: v for k, v in values.items() if k != "progress"}), flush=True)
    run(cfg, args.log_every)


if __name__ == "__main__":
    main()
