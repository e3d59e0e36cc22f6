"""Run a federation on Flower's simulation runtime, in this process.

The ServerApp and ClientApp are the very objects a deployment runs
(:data:`pollinate.server.app.app`, :data:`pollinate.client.app.app`). Only where the
devices come from differs: here each virtual SuperNode plays one user of a dataset.

Flower's Python entry point (``run_simulation``) gives the ServerApp an empty run config;
we pass the resolved config through the server context of the same runtime
(``flwr.simulation.run_simulation._run_simulation``, pinned by flwr 1.41.x). Devices get
their training configuration from the server's messages, as in a deployment, and their
privacy policy from their node config (:func:`simulation_policy`), as a deployed device
gets it from its owner: the server never sets it. The engine installs
:mod:`pollinate.simulations.flower_patches`, a scaling fix of Flower's message polling
and the hook that gives virtual nodes that node config.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from flwr.app import Context, RecordDict

from pollinate.client.policy import NODE_CONFIG_KEY, DevicePolicy
from pollinate.shared.config import FederationConfig
from pollinate.shared.privacy.interaction_canaries import FILE as CANARY_FILE
from pollinate.shared.privacy.interaction_canaries import NODE_CONFIG_KEY as CANARY_NODE_KEY
from pollinate.shared.privacy.interaction_canaries import InteractionCanaries, expected_canaries
from pollinate.shared.progress import step
from pollinate.shared.tasks import load_task_for

#: Ray resources per virtual device. Flower's default (2 CPUs) runs one device at a
#: time on a 2-core machine; one CPU each runs one device per core.
DEFAULT_CPUS_PER_DEVICE = 1.0


def simulation_policy(cfg: FederationConfig) -> DevicePolicy:
    """The privacy policy of every simulated device of ``cfg``: the person who runs a
    simulation owns its devices, so the run's local-DP settings are their policy."""
    local = cfg.local_dp
    return DevicePolicy(
        local_dp=local,
        noise_multiplier=cfg.local_noise if local else None,
        target_epsilon=cfg.local_epsilon if local else None,
        planned_rounds=cfg.rounds,
        clip=cfg.local_clip,
        delta=cfg.local_delta,
        epsilon_budget=cfg.local_epsilon_budget if local else None,
        evaluation=cfg.local_evaluation if local else "answer",
        eval_noise=cfg.local_eval_noise,
        state_dir=cfg.device_state_dir,
        simulated=True,
        noise_seed=cfg.noise_seed,
        run_ledger=str((Path(cfg.out) / "ledger.jsonl").resolve()),
    )


def simulation_node_config(
    cfg: FederationConfig, n_devices: int, *, resume: bool = False
) -> dict[str, str]:
    """The node config of every virtual device: its policy and, for an audited run, the
    audit's interaction canaries (written here, by the experimenter, before the run; a
    resumed run keeps its own)."""
    config = {NODE_CONFIG_KEY: simulation_policy(cfg).to_json()}
    m, _ = expected_canaries(cfg.audit_canaries, cfg.dp)
    if m:
        path = Path(cfg.out) / CANARY_FILE
        if not (resume and path.exists()):
            n_items = load_task_for(cfg).data.n_items
            InteractionCanaries.create(m, n_devices, n_items).save(Path(cfg.out))
        config[CANARY_NODE_KEY] = str(path.resolve())
    return config


def count_devices(cfg: FederationConfig) -> int:
    """Number of virtual devices: one per user of the prepared task data."""
    if cfg.num_devices:
        return cfg.num_devices
    task = load_task_for(cfg)
    return task.data.n_users


def backend_config(cpus_per_device: float = DEFAULT_CPUS_PER_DEVICE) -> dict[str, Any]:
    return {
        "client_resources": {"num_cpus": cpus_per_device, "num_gpus": 0.0},
        "init_args": {
            "num_cpus": os.cpu_count() or 1,
            "include_dashboard": False,
            "logging_level": logging.ERROR,
            "log_to_driver": False,
        },
    }


def run_federation(
    cfg: FederationConfig,
    *,
    resume: bool = False,
    cpus_per_device: float = DEFAULT_CPUS_PER_DEVICE,
    verbose: bool = False,
) -> None:
    """Simulate ``cfg`` with one virtual device per user; writes the run directory."""
    from flwr.simulation.run_simulation import _run_simulation
    from flwr.supercore.telemetry import EventType

    from pollinate.client.app import app as client_app
    from pollinate.server.app import RESUME_KEY
    from pollinate.server.app import app as server_app
    from pollinate.simulations import flower_patches

    flower_patches.install()
    with step(f"loading {cfg.dataset}", enabled=cfg.progress):
        n_devices = count_devices(cfg)
    flower_patches.set_node_config(simulation_node_config(cfg, n_devices, resume=resume))
    run_config: dict[str, Any] = {k: v for k, v in cfg.to_flat().items() if v is not None}
    run_config[RESUME_KEY] = resume
    server_context = Context(
        run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    if cfg.progress:
        print(
            f"starting Ray with {n_devices:,} virtual devices (workers load the data once "
            "each; the rounds' progress follows)…",
            file=sys.stderr,
            flush=True,
        )
    _run_simulation(
        num_supernodes=n_devices,
        exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=client_app,
        server_app=server_app,
        backend_name="ray",
        backend_config=backend_config(cpus_per_device),
        server_app_context=server_context,
        verbose_logging=verbose,
    )
    if cfg.local_dp and (Path(cfg.out) / "metrics.json").exists():
        # Local-DP devices refuse evaluation by default (or release noisy sums): the
        # experimenter scores the released model on the devices' data, outside the run.
        from pollinate.simulations.oracle import add_oracle_to_summary

        add_oracle_to_summary(Path(cfg.out))
