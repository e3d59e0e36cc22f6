"""A small local web app on the Pollinate SDK: record what you watched or rated, see
recommendations with their explanations, see the privacy you have spent and what has
left the device, and forget an item or everything.

Everything runs on this machine: the page talks to a server on 127.0.0.1 only, which
holds one :class:`pollinate.client.Device` (an encrypted store). The page loads nothing
from the network.

    make edge-app          # ML-100K's catalogue from ../shared/data, store in runs/edge-app
    .venv/bin/python examples/edge-app/edge_app.py --dataset ml-100k \
        --data-dir /work/shared/data --store runs/edge-app/device.db [--model global_params.npz]

The store's key: a passphrase from ``POLLINATE_PASSPHRASE``, else a key file (0600)
beside the store, created on first run. ``--model`` installs a global model (the
``global_params.npz`` of a federated run on the same dataset and task); without one the
device recommends from item content and popularity until it joins a federation.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from pollinate.client import Catalogue, Device, StoreError

HERE = Path(__file__).resolve().parent
PAGE = HERE / "page.html"


def create_app(device: Device) -> Starlette:
    """The web app over ``device`` (the caller opens and closes it)."""

    def state() -> dict[str, Any]:
        cat = device.catalogue
        events = device.events()
        recs = device.recommend(k=10, explain=True)
        model = device.global_model()
        return {
            "events": [
                {
                    "id": e.id,
                    "item": e.item,
                    "title": _title(cat, e.item),
                    "kind": e.kind,
                    "rating": e.rating,
                    "timestamp": e.timestamp,
                    "known": cat is not None and cat.index(e.item) is not None,
                }
                for e in reversed(events)
            ],
            "recommendations": [r.to_dict() for r in recs],
            "privacy": device.privacy().to_dict(),
            "policy": {
                "local_dp": device.policy.local_dp,
                "epsilon_budget": device.policy.epsilon_budget,
            },
            "catalogue_items": 0 if cat is None else cat.n_items,
            "model_round": None if model is None else model.round,
            "model": None if model is None else model.model_config.get("model"),
        }

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE.read_text())

    async def get_state(request: Request) -> Response:
        return JSONResponse(state())

    async def search(request: Request) -> Response:
        cat = device.catalogue
        q = request.query_params.get("q", "").strip().lower()
        if cat is None or not q:
            return JSONResponse([])
        titles = np.char.lower(cat.titles if cat.titles is not None else cat.item_ids)
        hits = np.flatnonzero(np.char.find(titles, q) >= 0)
        hits = hits[np.argsort(-cat.pop[hits], kind="stable")][:15]
        return JSONResponse(
            [
                {
                    "item": str(cat.item_ids[i]),
                    "title": cat.title(int(i)),
                    "genres": cat.genres_of(int(i)),
                }
                for i in hits
            ]
        )

    async def record(request: Request) -> Response:
        try:
            body = await request.json()
            rating = body.get("rating")
            device.record(
                body.get("item"),
                kind=body.get("kind", "view"),
                rating=None if rating in (None, "") else float(rating),
            )
        except (StoreError, ValueError, TypeError, AttributeError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse(state())

    async def forget(request: Request) -> Response:
        body = await request.json()
        try:
            n = device.forget(body.get("item"))
        except StoreError as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        return JSONResponse({**state(), "forgotten": n})

    async def export(request: Request) -> Response:
        return JSONResponse(
            device.export(),
            headers={"Content-Disposition": "attachment; filename=pollinate-export.json"},
        )

    return Starlette(
        routes=[
            Route("/", page),
            Route("/api/state", get_state),
            Route("/api/search", search),
            Route("/api/record", record, methods=["POST"]),
            Route("/api/forget", forget, methods=["POST"]),
            Route("/api/export", export),
        ]
    )


def _title(cat: Catalogue | None, item: str) -> str:
    if cat is None:
        return item
    i = cat.index(item)
    return item if i is None else cat.title(i)


# ------------------------------------------------------------------ the demo's catalogue
def read_titles(dataset: str, data_dir: Path) -> dict[str, str]:
    """Item id -> title from the MovieLens files (the loaders keep genres, not titles)."""
    if dataset == "ml-100k":
        path = data_dir / "ml-100k" / "u.item"
        lines = path.read_text(encoding="latin-1").splitlines()
        return {p[0]: p[1] for p in (line.split("|") for line in lines) if len(p) > 1}
    if dataset == "ml-latest-small":
        import csv

        with (data_dir / "ml-latest-small" / "movies.csv").open(encoding="utf-8") as fh:
            return {row["movieId"]: row["title"] for row in csv.DictReader(fh)}
    return {}


def demo_catalogue(dataset: str, data_dir: Path, task: str) -> Catalogue:
    """The catalogue the server of a run on ``dataset``/``task`` would send: the task's
    items (pollinate.shared.tasks.load_task), popularity over its training rows."""
    from pollinate.shared.tasks import load_task

    task_data = load_task(dataset, task=task, data_dir=str(data_dir))  # type: ignore[arg-type]
    titles = read_titles(dataset, data_dir)
    data = task_data.data
    names = [titles.get(str(i), str(i)) for i in data.item_ids]
    return Catalogue.from_interactions(data, rows=task_data.split.train, titles=names)


def install_model(device: Device, catalogue: Catalogue, model: Path | None, task: str) -> None:
    """Install ``model`` (global parameters, .npz) with ``catalogue``, or the catalogue
    alone: a device before its first round recommends from content and popularity."""
    if model is None:
        device.set_catalogue(catalogue)
        return
    with np.load(model) as z:
        params = {k: z[k] for k in z.files if not k.startswith("user_")}
    name = "mf" if "item_factors.weight" in params else "interest"
    device.set_global(1, params, catalogue, {"model": name, "task": task})


def open_device(store: Path) -> Device:
    passphrase = os.environ.get("POLLINATE_PASSPHRASE")
    if passphrase:
        return Device.open(store, passphrase=passphrase)
    key_file = store.with_suffix(".key")
    if not key_file.exists():
        from pollinate.client.keys import write_key_file

        write_key_file(key_file)
    return Device.open(store, key_file=key_file)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Pollinate edge-app demo")
    parser.add_argument("--store", type=Path, default=Path("runs/edge-app/device.db"))
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--data-dir", type=Path, default=Path("../shared/data"))
    parser.add_argument("--task", default="ranking", choices=["ranking", "rating"])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    import uvicorn

    device = open_device(args.store)
    if device.global_model() is None or args.model is not None:
        print(f"loading the {args.dataset} catalogue ...", file=sys.stderr)
        install_model(device, demo_catalogue(args.dataset, args.data_dir, args.task),
                      args.model, args.task)  # fmt: skip
    print(f"open http://{args.host}:{args.port}/ (Ctrl-C to stop)", file=sys.stderr)
    try:
        uvicorn.run(create_app(device), host=args.host, port=args.port, log_level="warning")
    finally:
        device.close()


if __name__ == "__main__":
    main()
