"""The Flower ServerApp of Pollinate (Message API).

``flwr run .`` and ``pollinate simulate`` both run this object. Its configuration is the
run config (``[tool.flwr.app.config]`` plus overrides), validated once by
:class:`~pollinate.shared.config.FederationConfig`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from pollinate.server.federation import Server, write_summary
from pollinate.server.plots import plot_history
from pollinate.shared.config import FederationConfig
from pollinate.shared.environment import record_environment
from pollinate.shared.privacy.interaction_canaries import expected_canaries
from pollinate.shared.tasks import Catalog, catalog_of, load_task_for

app = ServerApp()

RESUME_KEY = "resume"


def with_canary_items(catalog: Catalog, cfg: FederationConfig) -> Catalog:
    """The catalogue with the audit's interaction canaries' items (M canaries and a sink,
    content-free), when the run has them: every device adds the same items."""
    m, _ = expected_canaries(cfg.audit_canaries, cfg.dp)
    if not m:
        return catalog
    genres = catalog.item_genres
    if genres is not None:
        genres = np.concatenate([genres, np.zeros((m + 1, genres.shape[1]), genres.dtype)])
    return Catalog(catalog.n_items + m + 1, genres, catalog.rating_scale)


def run_server(grid: Grid, cfg: FederationConfig, *, resume: bool = False) -> dict[str, Any]:
    """Run a whole federation on ``grid`` and write the run directory ``cfg.out``."""
    task_data = load_task_for(cfg)
    # The server keeps the item catalogue only; the rows stay with the devices.
    catalog = with_canary_items(catalog_of(task_data.data), cfg)
    n_devices = cfg.num_devices or task_data.data.n_users
    if cfg.send_catalogue:
        # Real devices know items by the app's ids: the catalogue goes with the model.
        from pollinate.server.deploy.catalogue import with_catalogue

        grid = with_catalogue(grid, task_data)
    del task_data
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_flat(), indent=2, sort_keys=True))
    record_environment(run_dir, resumed=resume)
    server = Server(grid, cfg, catalog, n_devices)
    if resume:
        server.resume()
    outcome = server.run()
    write_summary(run_dir, cfg, outcome)
    plot_history(server.history, run_dir / "metrics.png")
    return outcome


@app.main()
def main(grid: Grid, context: Context) -> None:
    values = dict(context.run_config)
    resume = bool(values.pop(RESUME_KEY, False))
    run_server(grid, FederationConfig.from_mapping(values), resume=resume)
