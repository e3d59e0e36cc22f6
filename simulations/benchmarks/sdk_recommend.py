"""How long ``Device.recommend`` takes over a 10,000-item catalogue, and what importing
the SDK costs, in one run.

A store holds an MF global model (10,000 items, dim 64, from a seeded generator: the
time does not depend on the values) with its catalogue (18 genres, popularity), and a
history of H rated events (H = 0, 20, 100, 500). ``Device.recommend(k=10,
explain=True)`` is timed end to end, wall and process CPU time (store read and decrypt
of the events, fold-in, scoring every item, top-k, leave-one-out explanations), 30
calls after one warm-up;
the first call after opening (which also decrypts and caches the global model) is
reported apart. Import: a fresh interpreter runs ``from pollinate.client import
Device`` and lists any Ray, torch or server module it pulled.

    .venv/bin/python simulations/benchmarks/sdk_recommend.py
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pollinate.client import Catalogue, Device
from pollinate.client.keys import new_key

N_ITEMS, DIM, GENRES = 10_000, 64, 18


def main() -> None:
    rng = np.random.default_rng(0)
    genres = (rng.random((N_ITEMS, GENRES)) < 0.12).astype(np.float32)
    cat = Catalogue(
        item_ids=np.array([f"item-{i}" for i in range(N_ITEMS)]),
        genres=genres,
        genre_names=tuple(f"genre-{g}" for g in range(GENRES)),
        popularity=rng.zipf(1.5, N_ITEMS).clip(0, 10_000).astype(float),
        rating_scale=(1.0, 5.0),
    )
    params = {
        "item_factors.weight": rng.normal(0, 0.3, (N_ITEMS, DIM)).astype(np.float32),
        "item_bias.weight": rng.normal(0, 0.1, (N_ITEMS, 1)).astype(np.float32),
        "global_bias.weight": np.array([[0.0]], np.float32),
    }
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {platform.python_version()}",
        "load_average_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory() as tmp:
        key = new_key()
        for h in (0, 20, 100, 500):
            path = Path(tmp) / f"d{h}.db"
            with Device.open(path, key=key) as dev:
                dev.set_global(1, params, cat, {"model": "mf", "task": "ranking"})
                for i, item in enumerate(rng.choice(N_ITEMS, h, replace=False)):
                    dev.record(f"item-{item}", kind="rating", rating=float(rng.integers(1, 6)),
                               timestamp=1e9 + i)  # fmt: skip
            with Device.open(path, key=key) as dev:
                t = time.perf_counter()
                dev.recommend(k=10)
                first = (time.perf_counter() - t) * 1e3
                times, cpu = [], []
                for _ in range(30):
                    t, c = time.perf_counter(), time.process_time()
                    recs = dev.recommend(k=10, explain=True)
                    times.append((time.perf_counter() - t) * 1e3)
                    cpu.append((time.process_time() - c) * 1e3)
                assert len(recs) == 10
                out[f"history={h}"] = {
                    "first_call_ms": round(first, 1),
                    "p50_ms": round(float(np.percentile(times, 50)), 1),
                    "p95_ms": round(float(np.percentile(times, 95)), 1),
                    "cpu_p50_ms": round(float(np.percentile(cpu, 50)), 1),
                    "source": recs[0].source,
                }
                print(h, out[f"history={h}"], flush=True)
    code = (
        "import sys, time; t = time.perf_counter(); from pollinate.client import Device;"
        "import pollinate.client.device; dt = time.perf_counter() - t;"
        "bad = sorted({m.split('.')[0] if not m.startswith('pollinate') else m for m in "
        "sys.modules if m.split('.')[0] in ('ray', 'torch', 'opacus') or "
        "m.startswith(('pollinate.server', 'pollinate.simulations'))});"
        "print(round(dt * 1e3), bad)"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    ms, bad = run.stdout.split(" ", 1)
    out["import"] = {"ms": int(ms), "ray_torch_or_server_modules": bad.strip()}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
