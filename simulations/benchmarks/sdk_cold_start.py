"""Cold start on real data: how good are a new device's first recommendations?

Protocol. Hold out 20% of the users (seeded) as new devices; train the global model
(BiasedMF, ranking, the project's centralized trainer with early stopping on the other
users' leave-last-out validation rows) and count the catalogue's popularity on the other
80% only. Each new user reveals their first ``n`` interactions in time order
(n = 0, 1, 2, 3), recorded as the device would (``kind="rating"`` with the rating), and
the device recommends 10 items through :func:`pollinate.client.recommend.recommend`
(the same code :meth:`Device.recommend` runs). Relevant: every later interaction of
that user. NDCG@10 and HR@10 (binary relevance, ideal DCG over min(10, #relevant)),
averaged over the new users; paired bootstrap 95% interval of the difference to
most-popular.

Compared: most-popular (the reference), content + popularity
(:mod:`pollinate.client.cold_start`, several genre weights), the MF fold-in (several
ridge weights), and the device's rule (:data:`MIN_EVENTS_FOR_MODEL`).

    .venv/bin/python simulations/benchmarks/sdk_cold_start.py --dataset ml-100k \
        --data-dir /work/shared/data [--epochs 15]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.client.recommend import recommend
from pollinate.client.store import Event, GlobalModel
from pollinate.shared.catalogue import Catalogue
from pollinate.shared.data import load_dataset
from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions


def split_users(data: Interactions, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = rng.permutation(data.n_users)
    n_new = data.n_users // 5
    return np.sort(users[n_new:]), np.sort(users[:n_new])


def warm_split(data: Interactions, warm: np.ndarray) -> Split:
    """Leave-last-out over the warm users (train / valid / test rows of the full data)."""
    order = data.time_order()
    is_warm = np.isin(data.users[order], warm)
    order = order[is_warm]
    users = data.users[order]
    last = np.flatnonzero(np.r_[users[1:] != users[:-1], True])
    keep = np.ones(len(order), dtype=bool)
    keep[last] = False
    keep[last - 1] = False
    return Split(train=order[keep], valid=order[last - 1], test=order[last])


def train_mf(data: Interactions, split: Split, epochs: int, dataset: str) -> dict[str, np.ndarray]:
    from pollinate.simulations.centralized import _progress, _Trainer, make_config

    config = make_config(dataset=dataset, model="mf", task="ranking", epochs=epochs, seed=0,
                         threads=1)  # fmt: skip
    hp, _ = config.hyper_params()
    trainer = _Trainer(config, hp, data, split)
    with _progress(False) as bar:
        model, result = trainer.fit(bar)
    print(
        f"trained mf: best epoch {result.best_epoch}, valid ndcg@10 {result.best:.4f}", flush=True
    )
    return model.global_state()


def ndcg_hr(top: list[int], relevant: set[int]) -> tuple[float, float]:
    gains = [1.0 / np.log2(r + 2) for r, i in enumerate(top) if i in relevant]
    ideal = sum(1.0 / np.log2(r + 2) for r in range(min(10, len(relevant))))
    return (sum(gains) / ideal if ideal else 0.0), float(bool(gains))


def events_of(data: Interactions, rows: np.ndarray, cat: Catalogue) -> list[Event]:
    out = []
    for n, r in enumerate(rows):
        rating = None if data.ratings is None else float(data.ratings[r])
        ts = float(data.timestamps[r]) if data.timestamps is not None else float(n)
        out.append(Event(n + 1, str(cat.item_ids[data.items[r]]), "rating" if rating else "view",
                         rating, ts))  # fmt: skip
    return out


def evaluate(
    data: Interactions,
    new_users: np.ndarray,
    cat: Catalogue,
    model: GlobalModel,
    n_reveal: int,
    method: str,
    **knobs: Any,
) -> np.ndarray:
    order = data.time_order()
    users_sorted = data.users[order]
    scores = []
    for u in new_users:
        lo, hi = np.searchsorted(users_sorted, [u, u + 1])
        rows = order[lo:hi]
        if len(rows) <= n_reveal:
            continue
        revealed, rest = rows[:n_reveal], rows[n_reveal:]
        events = events_of(data, revealed, cat)
        relevant = {int(data.items[r]) for r in rest} - {int(data.items[r]) for r in revealed}
        if method == "most-popular":
            s = cat.pop.astype(float).copy()
            s[[int(data.items[r]) for r in revealed]] = -np.inf
            top = list(np.argsort(-s, kind="stable")[:10])
        else:
            use_model = None if method == "content" else model
            recs = recommend(events, cat, use_model, k=10, explain=False, **knobs)
            top = [int(cat.index(r.item) or 0) for r in recs]
        scores.append(ndcg_hr(top, relevant))
    return np.asarray(scores)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", default="/work/shared/data")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument(
        "--model-cache", type=Path, default=None, help="reuse (or save) the trained model here"
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    data = load_dataset(args.dataset, data_dir=args.data_dir)
    warm, new = split_users(data, args.seed)
    split = warm_split(data, warm)
    cache = args.model_cache
    if cache is not None and cache.exists():
        with np.load(cache) as z:
            params = {k: z[k] for k in z.files}
    else:
        params = train_mf(data, split, args.epochs, args.dataset)
        if cache is not None:
            np.savez(cache, **params)  # type: ignore[arg-type]
    train_rows = np.concatenate([split.train, split.valid, split.test])
    cat = Catalogue.from_interactions(data, rows=train_rows)
    model = GlobalModel(1, params, cat, {"model": "mf", "task": "ranking"})
    methods: list[tuple[str, str, dict[str, Any]]] = [("most-popular", "most-popular", {})]
    for w in (0.1, 0.25, 0.5):
        methods.append((f"content+pop w={w}", "content", {"genre_weight": w}))
    for ridge in (1.0, 10.0):
        methods.append((f"mf fold-in ridge={ridge}", "model", {"ridge": ridge, "min_events": 1}))
    for pw in (1.0, 3.0, 10.0):
        methods.append((f"mf fold-in ridge=10 + popularity x{pw}", "model",
                        {"ridge": 10.0, "min_events": 1, "pop_weight": pw}))  # fmt: skip
    methods.append(("device default", "model", {}))
    rows: list[dict[str, Any]] = []
    rng = np.random.default_rng(0)
    for n in (0, 1, 2, 3):
        base = evaluate(data, new, cat, model, n, "most-popular")
        for label, method, knobs in methods:
            if n == 0 and method == "model" and label != "device default":
                continue
            s = base if method == "most-popular" else evaluate(data, new, cat, model, n, method,
                                                               **knobs)  # fmt: skip
            diff = s[:, 0] - base[:, 0]
            boot = [diff[rng.integers(0, len(diff), len(diff))].mean() for _ in range(1000)]
            rows.append({
                "n_revealed": n, "method": label, "users": len(s),
                "ndcg@10": round(float(s[:, 0].mean()), 4),
                "hr@10": round(float(s[:, 1].mean()), 4),
                "vs_most_popular": round(float(diff.mean()), 4),
                "ci95": [round(float(np.percentile(boot, 2.5)), 4),
                         round(float(np.percentile(boot, 97.5)), 4)],
            })  # fmt: skip
            print(json.dumps(rows[-1]), flush=True)
    result = {"dataset": args.dataset, "new_users": len(new), "rows": rows,
              "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"done in {result['seconds']} s")


if __name__ == "__main__":
    main()
