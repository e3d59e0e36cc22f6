"""The most-popular baseline of the ranking task: test metrics when every user gets the
items most often seen in training, on the same split and full-ranking evaluation as
every model (``pollinate.shared.training.evaluate_ranking``).

    python simulations/benchmarks/popularity.py --datasets ml-100k,ml-latest-small,amazon-beauty

A federated or private ranking model near this line has learned popularity, not users.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from pollinate.shared.models.popularity import MostPopular
from pollinate.shared.tasks import load_task
from pollinate.shared.training import evaluate_ranking

REPO_ROOT = Path(__file__).resolve().parents[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="ml-100k,ml-latest-small,amazon-beauty")
    parser.add_argument("--data-dir", default=str(REPO_ROOT.parent / "shared" / "data"))
    parser.add_argument("--fold", type=int, default=0)
    args = parser.parse_args()
    for name in args.datasets.split(","):
        task = load_task(name, task="ranking", data_dir=args.data_dir, fold=args.fold)
        # popularity over the rows a test prediction may read (train and validation)
        seen = np.concatenate([task.split.train, task.split.valid])
        counts = np.bincount(task.data.items[seen], minlength=task.data.n_items)
        final = evaluate_ranking(MostPopular(counts), task.data, task.split, "test")
        print(json.dumps({"dataset": name, "baseline": "most-popular", "final": final}))


if __name__ == "__main__":
    main()
