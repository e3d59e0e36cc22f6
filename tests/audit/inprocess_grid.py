"""A Flower ``Grid`` that delivers each message to the real ClientApp in this process.

The server (:func:`pollinate.server.app.run_server`), the devices (the ClientApp with its
policy, Opacus DP-SGD, its ledger) and the audit's canaries are the production code; only
the transport is a function call, so a test can inject a fault into the devices (for
example, noise switched off) and see the audit catch it.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flwr.app import Context, Message, RecordDict

from pollinate.client.app import app as client_app
from pollinate.server.app import run_server
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import load_task_for
from pollinate.simulations.engine import simulation_node_config


class InProcessGrid:
    def __init__(self, node_configs: dict[int, dict[str, Any]]) -> None:
        self.contexts = {
            node: Context(
                run_id=1, node_id=node, node_config=cfg, state=RecordDict(), run_config={}
            )
            for node, cfg in node_configs.items()
        }

    def get_node_ids(self) -> list[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        return [client_app(m, self.contexts[m.metadata.dst_node_id]) for m in messages]


def run_in_process(settings: dict[str, Any]) -> Path:
    """Run a whole federation of ``settings`` (run-config keys) and return its folder."""
    cfg = FederationConfig.from_mapping(settings)
    n = load_task_for(cfg).data.n_users
    base = simulation_node_config(cfg, n)
    grid = InProcessGrid({u + 1: {**base, "partition-id": u} for u in range(n)})
    run_server(grid, cfg)  # type: ignore[arg-type]
    out = Path(cfg.out)
    if cfg.local_dp:
        from pollinate.simulations.oracle import add_oracle_to_summary

        add_oracle_to_summary(out)
    return out
