"""Per-device metric files, grouped by how much each user trained on (quartiles).

    python docs/experiments/scripts/by_activity.py CONFIG A.jsonl [B.jsonl ...] \
        [--metric ndcg@10] [--groups 4]

CONFIG is a run's ``config.json`` (it defines the devices and their training rows); each
file holds per-device sums of the same devices in the same order (``rescore_run.py``,
``central_per_device.py`` or ``tune_inprocess.py`` with ``--per-device``). Devices are
split into ``--groups`` groups of about equal size by their number of training rows.
For each group it prints every file's mean and, for each file after the first, the
paired difference to the first (mean and its standard error): where over the users a
difference between two models lies.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pollinate.client.device_data import DeviceIndex
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import load_task_for


def per_device(path: str, metric: str) -> np.ndarray:
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    key = f"{metric}_sum"
    return np.array([r[key] / r["count"] if r.get("count") else np.nan for r in rows])


def train_rows(config: Path) -> np.ndarray:
    cfg = FederationConfig.from_mapping(json.loads(config.read_text()))
    index = DeviceIndex(load_task_for(cfg))
    return np.array([len(index.device(u).split.train) for u in range(index.n_devices)])


def grouped(rows: np.ndarray, values: list[np.ndarray], groups: int) -> list[dict[str, object]]:
    """One dict per group: its row range, size, each file's mean, paired differences."""
    order = np.argsort(rows, kind="stable")
    out: list[dict[str, object]] = []
    for chunk in np.array_split(order, groups):
        both = chunk[np.all([~np.isnan(v[chunk]) for v in values], axis=0)]
        row: dict[str, object] = {
            "train_rows": [int(rows[chunk].min()), int(rows[chunk].max())],
            "devices": len(both),
            "means": [float(v[both].mean()) for v in values],
        }
        diffs = []
        for v in values[1:]:
            d = v[both] - values[0][both]
            diffs.append({"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))})
        row["minus_first"] = diffs
        out.append(row)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path)
    parser.add_argument("files", nargs="+")
    parser.add_argument("--metric", default="ndcg@10")
    parser.add_argument("--groups", type=int, default=4)
    args = parser.parse_args()
    rows = train_rows(args.config)
    values = [per_device(f, args.metric) for f in args.files]
    for f, v in zip(args.files, values, strict=True):
        if v.shape != rows.shape:
            raise SystemExit(f"{f} has {v.size} devices, the run {rows.size}: not the same run")
    print(json.dumps({"metric": args.metric, "files": args.files}))
    for row in grouped(rows, values, args.groups):
        print(json.dumps(row))


if __name__ == "__main__":
    main()
