"""Which global arrays does the server over- or under-step? Read the iterates a run kept
and measure, array by array, how consecutive server steps line up.

    python docs/experiments/scripts/step_dynamics.py RUN_DIR [--last 6] [--from-round 10]

RUN_DIR is an ``iterate_average.py train`` directory (``rounds/round-R.npz``: the global
parameters after every round). For each array it prints one JSON line with

- ``cos_early`` / ``cos_late``: the mean cosine between consecutive server steps
  ``x_r - x_{r-1}`` and ``x_{r+1} - x_r`` over the first and the last ``--last`` pairs.
  Near +1: the array keeps moving one way, so a larger step would get there sooner. Near
  -1: each step undoes the last, so the step overshoots.
- ``net_over_path``: per coordinate, ``|x_R - x_F| / sum of |steps|`` from round
  ``--from-round`` F to the last round R, median over coordinates (1: straight, 0: back
  and forth).

With ``--by-popularity`` it also splits the rows of ``item_emb.weight`` into quartiles
of their training popularity (the run's ``config.json`` names the data) and prints the
same figures per quartile, with the median row norm and step size.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

Arrays = dict[str, np.ndarray]


def load_iterates(run: Path) -> tuple[int, list[Arrays]]:
    """(first round kept, the global parameters after each round from it, in round order,
    float64)."""
    files = sorted((run / "rounds").glob("round-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    if len(files) < 3:
        raise SystemExit(f"{run}/rounds holds {len(files)} iterates; need at least 3")
    rounds = [int(p.stem.split("-")[1]) for p in files]
    if rounds != list(range(rounds[0], rounds[0] + len(rounds))):
        raise SystemExit(f"{run}/rounds has gaps: rounds {rounds}")
    out = []
    for path in files:
        with np.load(path) as f:
            out.append({k: f[k].astype(np.float64) for k in f.files})
    return rounds[0], out


def step_cosines(iterates: list[np.ndarray], axis: int | None = None) -> np.ndarray:
    """Cosines between consecutive steps: (R - 2,) for the whole array, or per row
    (R - 2, rows) with ``axis=1`` on 2-D arrays. A zero step gives cosine 0."""
    steps = np.diff(np.stack(iterates), axis=0)
    a, b = steps[:-1], steps[1:]
    if axis is None:
        a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    dot, na, nb = (a * b).sum(-1), (a * a).sum(-1), (b * b).sum(-1)
    denom = np.sqrt(na * nb)
    return np.where(denom > 0, dot / np.where(denom > 0, denom, 1.0), 0.0)


def net_over_path(iterates: list[np.ndarray]) -> np.ndarray:
    """Per coordinate, ``|last - first| / sum |steps|`` (1 where nothing moved)."""
    stack = np.stack(iterates)
    path = np.abs(np.diff(stack, axis=0)).sum(0)
    net = np.abs(stack[-1] - stack[0])
    return np.where(path > 0, net / np.where(path > 0, path, 1.0), 1.0)


def summarize(iterates: list[Arrays], last: int, from_index: int) -> list[dict[str, Any]]:
    """One row per array: early and late step cosines and the median net/path ratio."""
    rows = []
    for name in sorted(iterates[0]):
        series = [x[name] for x in iterates]
        cos = step_cosines(series)
        rows.append(
            {
                "array": name,
                "cos_early": float(cos[:last].mean()),
                "cos_late": float(cos[-last:].mean()),
                "net_over_path": float(np.median(net_over_path(series[from_index:]))),
            }
        )
    return rows


def by_popularity(
    iterates: list[np.ndarray], popularity: np.ndarray, last: int, from_index: int, groups: int = 4
) -> list[dict[str, Any]]:
    """The same figures for the rows of an item table, in popularity groups of equal size."""
    cos = step_cosines(iterates, axis=1)[-last:].mean(0)
    ratio = np.median(net_over_path(iterates[from_index:]), axis=1)
    norm = np.linalg.norm(iterates[-1], axis=1)
    step = np.median(np.abs(iterates[-1] - iterates[-2]), axis=1)
    out = []
    for chunk in np.array_split(np.argsort(popularity, kind="stable"), groups):
        out.append(
            {
                "popularity": [float(popularity[chunk].min()), float(popularity[chunk].max())],
                "rows": len(chunk),
                "cos_late": float(np.median(cos[chunk])),
                "net_over_path": float(np.median(ratio[chunk])),
                "row_norm": float(np.median(norm[chunk])),
                "step": float(np.median(step[chunk])),
            }
        )
    return out


def training_popularity(run: Path, n_items: int) -> np.ndarray:
    """How often each item occurs in the training rows of the run's data (and its
    validation rows, which a ``--train-on-validation`` run trains on)."""
    from pollinate.shared.config import FederationConfig
    from pollinate.shared.tasks import load_task_for

    cfg = FederationConfig.from_mapping(json.loads((run / "config.json").read_text()))
    task = load_task_for(cfg)
    rows = task.split.train
    if cfg.train_on_validation:
        rows = np.concatenate([rows, task.split.valid])
    return np.bincount(task.data.items[rows], minlength=n_items).astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--last", type=int, default=6, help="step pairs averaged (early/late)")
    parser.add_argument("--from-round", type=int, default=10, help="start of net/path")
    parser.add_argument("--by-popularity", action="store_true")
    args = parser.parse_args()
    first, iterates = load_iterates(args.run)
    from_index = max(args.from_round - first, 0)
    if from_index > len(iterates) - 2:
        raise SystemExit(f"--from-round {args.from_round} leaves fewer than two iterates")
    for row in summarize(iterates, args.last, from_index):
        print(json.dumps(row))
    if args.by_popularity:
        table = [x["item_emb.weight"][:-1] for x in iterates]  # the last row pads histories
        pop = training_popularity(args.run, table[0].shape[0])
        for row in by_popularity(table, pop, args.last, from_index):
            print(json.dumps({"array": "item_emb.weight", **row}))


if __name__ == "__main__":
    main()
