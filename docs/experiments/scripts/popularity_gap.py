"""Where two models differ by the popularity of the held-out item: a federated run's
model against a centralized one, user by user, grouped by how often the test item
occurs in the training rows.

    python docs/experiments/scripts/popularity_gap.py RUN_DIR CENTRAL_OUT [--groups 4] \
        [--part test] [--ranks FILE]

RUN_DIR is a federated run directory (final ``global_params.npz`` and device stores, as
for ``rescore_run.py``); CENTRAL_OUT a ``pollinate centralized --out`` directory of the
same dataset and architecture (``model.npz``). Each user's held-out item is ranked by
both models over the items the user has not seen (as the devices evaluate). Users are
split into groups of equal size by the training popularity of their held-out item; for
each group it prints both models' NDCG@10 and the paired difference (federated minus
centralized) with its standard error. ``--ranks`` writes each user's two ranks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from pollinate.client.app import fresh_model
from pollinate.client.device_data import DeviceIndex
from pollinate.client.local_state import DiskStateStore
from pollinate.shared.config import FederationConfig
from pollinate.shared.models.base import RecModel
from pollinate.shared.tasks import load_task_for
from pollinate.shared.threads import use_one_thread
from pollinate.shared.training.examples import build_examples
from pollinate.simulations.centralized import load_user_rows


def ndcg_at_10(ranks: np.ndarray) -> np.ndarray:
    return np.where(ranks <= 10, 1.0 / np.log2(ranks + 1.0), 0.0)


def rank_of_held_out(model: RecModel, device, part: str) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    """(held-out item, its 1-based rank among the items the user has not seen)."""
    data, split = device.data, device.split
    rows = split.valid if part == "valid" else split.test
    context = split.train if part == "valid" else np.concatenate([split.train, split.valid])
    ex = build_examples(data, rows[:1], context_rows=context, history_len=model.history_len)
    model.eval()
    with torch.no_grad():
        scores = model.score_all(ex)[0].clone()
    scores[torch.as_tensor(data.items[context], dtype=torch.long)] = -float("inf")
    item = int(ex["item"][0])
    return item, int((scores > scores[item]).sum()) + 1


def grouped(
    popularity: np.ndarray, fed: np.ndarray, central: np.ndarray, groups: int
) -> list[dict[str, object]]:
    order = np.argsort(popularity, kind="stable")
    out: list[dict[str, object]] = []
    for chunk in np.array_split(order, groups):
        a, b = ndcg_at_10(fed[chunk]), ndcg_at_10(central[chunk])
        d = a - b
        out.append({
            "item_popularity": [int(popularity[chunk].min()), int(popularity[chunk].max())],
            "users": len(chunk),
            "federated": float(a.mean()),
            "centralized": float(b.mean()),
            "difference": float(d.mean()),
            "se": float(d.std(ddof=1) / np.sqrt(len(d))),
        })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("central", type=Path)
    parser.add_argument("--groups", type=int, default=4)
    parser.add_argument("--part", choices=("valid", "test"), default="test")
    parser.add_argument("--ranks", type=Path)
    args = parser.parse_args()
    cfg = FederationConfig.from_mapping(json.loads((args.run_dir / "config.json").read_text()))
    if cfg.task != "ranking" or cfg.model != "interest" or cfg.device_state_dir is None:
        raise SystemExit("needs an interest ranking run with a device-state-dir")
    use_one_thread()
    task = load_task_for(cfg)
    index = DeviceIndex(task)
    popularity = np.bincount(task.data.items[task.split.train], minlength=task.data.n_items)
    with np.load(args.run_dir / "global_params.npz") as saved:
        glob = {k: saved[k] for k in saved.files}
    with np.load(args.central / "model.npz") as saved:
        central_w = {k: saved[k] for k in saved.files}
    flat = cfg.to_flat()
    rows: list[dict[str, int]] = []
    for u in range(index.n_devices):
        device = index.device(u)
        held = device.split.valid if args.part == "valid" else device.split.test
        if len(held) == 0:
            continue
        fed = fresh_model(flat, device, u)
        fed.load_global_state(glob)
        private = DiskStateStore(Path(cfg.device_state_dir), f"device-{u}").load(2**31) or {}
        central = fresh_model(flat, device, u)
        load_user_rows(central, central_w, u)
        with torch.no_grad():
            params = dict(fed.named_parameters())
            for k, v in private.items():
                params[k].copy_(torch.as_tensor(v))
        item, fed_rank = rank_of_held_out(fed, device, args.part)
        _, central_rank = rank_of_held_out(central, device, args.part)
        rows.append({"device": u, "item": item, "federated": fed_rank, "centralized": central_rank})
    if args.ranks is not None:
        args.ranks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pop = np.array([popularity[r["item"]] for r in rows])
    fed_r = np.array([r["federated"] for r in rows])
    cen_r = np.array([r["centralized"] for r in rows])
    print(json.dumps({
        "users": len(rows),
        "federated": float(ndcg_at_10(fed_r).mean()),
        "centralized": float(ndcg_at_10(cen_r).mean()),
    }))  # fmt: skip
    for group in grouped(pop, fed_r, cen_r, args.groups):
        print(json.dumps(group))


if __name__ == "__main__":
    main()
