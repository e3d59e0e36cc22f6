"""The cheaper device step (one reused model per process, seeding without torch's
accelerator hooks) computes exactly what the previous one did: a freshly built model per
message, seeded with ``torch.manual_seed``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import Context, RecordDict

from pollinate.client.app import (
    _build,
    device_generator,
    simulated_device,
    train_config,
    train_reply,
)
from pollinate.client.policy import NODE_CONFIG_KEY
from pollinate.client.training import train_device
from pollinate.shared.config import FederationConfig
from pollinate.shared.wire import UPDATE_RECORD, record_to_arrays
from pollinate.simulations.engine import simulation_policy
from pollinate.simulations.fast.store import ShardStore

CONFIG: dict[str, Any] = {
    "dataset": "synthetic",
    "synthetic-users": 50,
    "synthetic-items": 30,
    "embedding-dim": 4,
    "rounds": 2,
    "seed": 7,
}


def old_step(config: dict[str, Any], context: Context, glob: dict[str, np.ndarray]) -> Any:
    """The device step as it was: a new model per message, torch.manual_seed in a fork."""
    device = simulated_device(config, context)
    p = int(context.node_config["partition-id"])
    with torch.random.fork_rng():
        init = device_generator(config, 0, p, salt=2)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=init)))
        model = _build(config, device)
    model.load_global_state(glob)
    gen = device_generator(config, int(config["round"]), p, salt=0)
    with torch.random.fork_rng(devices=[]):
        return train_device(model, device, train_config(config), gen).update


def test_reused_models_train_exactly_as_fresh_ones(tmp_path: Path) -> None:
    for model in ("mf", "interest"):  # interest: dropout draws from the seeded global RNG
        task = "rating" if model == "mf" else "ranking"
        cfg = FederationConfig.from_mapping(
            {**CONFIG, "model": model, "task": task, "out": str(tmp_path)}
        )
        from pollinate.server.federation import DEVICE_KEYS, initial_global_state
        from pollinate.shared.tasks import catalog_of, load_task_for

        flat = cfg.to_flat()
        config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None} | {"round": 1}
        glob = initial_global_state(cfg, catalog_of(load_task_for(cfg).data))
        policy = simulation_policy(cfg)
        for p in (0, 3, 11, 3):  # one process plays several devices, one of them twice
            ctx = Context(0, p, {NODE_CONFIG_KEY: policy.to_json(), "partition-id": p},
                          RecordDict(), {})  # fmt: skip
            content = train_reply(policy, dict(config), glob, ctx, store=ShardStore(None, "d", []))
            new = record_to_arrays(content.array_records[UPDATE_RECORD])
            old = old_step(dict(config), ctx, glob)
            assert set(new) == set(old)
            for k in old:
                np.testing.assert_array_equal(new[k], old[k], err_msg=f"{model} {p} {k}")
