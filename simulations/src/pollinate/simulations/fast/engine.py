"""``run_fast``: a whole federated run on the fast engine (see the package docstring)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from pollinate.server.federation import initial_global_state, write_summary
from pollinate.server.plots import plot_history
from pollinate.shared.config import FederationConfig
from pollinate.shared.environment import record_environment
from pollinate.shared.errors import ConfigError
from pollinate.shared.tasks import catalog_of, load_task_for
from pollinate.shared.wire import spec_of
from pollinate.simulations.engine import simulation_policy
from pollinate.simulations.fast.pool import (
    FastEngineError,
    ShardPool,
    cluster_cpus,
    connect,
)
from pollinate.simulations.fast.server import FastServer
from pollinate.simulations.fast.shard import ShardSpec
from pollinate.simulations.fast.store import SNAPSHOT_NAME

#: What ``metrics.json`` says about the engine of a fast run.
ENGINE = "fast: Ray actors each play a shard of devices and return one sum a round"


def check_supported(cfg: FederationConfig) -> None:
    """Refuse what the fast engine does not do, saying what to use instead."""
    if cfg.audit_canaries or getattr(cfg, "audit_holdout", None):
        raise FastEngineError(
            "the empirical audit's canaries and held-out users need every device's own "
            "upload, which the fast engine sums inside its workers; use --engine flower"
        )


def run_fast(
    cfg: FederationConfig,
    *,
    ray_address: str | None = None,
    workers: int | None = None,
    resume: bool = False,
    on_round: Callable[[int, dict[str, Any]], None] | None = None,
    keep_private: bool = False,
) -> dict[str, Any]:
    """Simulate ``cfg`` on the fast engine; writes the run directory as Flower's does.

    ``ray_address`` joins a running Ray cluster (default: start one on this machine);
    ``workers`` is the number of shards (default: one per CPU of the cluster).
    ``resume`` continues the run in ``cfg.out`` from its last checkpoint (any number of
    workers; the devices' private parameters come back from the snapshot that checkpoint
    wrote; releases made after it are accounted again, never forgotten).
    ``on_round(round, global_params)`` is called after each round's server step;
    ``keep_private`` writes every device's last private parameters to its folder under
    ``device-state-dir`` at the end (always done under local DP, for the oracle).
    """
    check_supported(cfg)
    if cfg.device_state_dir is None:
        # The devices' ledgers live in their own folders, as on Flower.
        cfg = cfg.model_copy(update={"device_state_dir": str(Path(cfg.out) / "devices")})
    assert cfg.device_state_dir is not None
    states = Path(cfg.device_state_dir) / SNAPSHOT_NAME
    task_data = load_task_for(cfg)
    catalog = catalog_of(task_data.data)
    n_devices = cfg.num_devices or task_data.data.n_users
    genres = task_data.data.item_genres is not None
    del task_data
    run_dir = Path(cfg.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(cfg.to_flat(), indent=2, sort_keys=True))
    record_environment(run_dir, resumed=resume)
    started = connect(ray_address)
    pool: ShardPool | None = None
    try:
        n_workers = workers or max(1, cluster_cpus())
        if n_workers < 1:
            raise FastEngineError(f"workers must be >= 1, got {n_workers}")
        # The driver copies every device's ledger event into the run's ledger itself.
        policy = replace(simulation_policy(cfg), run_ledger=None)
        spec = spec_of(initial_global_state(cfg, catalog))  # the server's, exactly
        specs = [
            ShardSpec(
                partitions=tuple(range(i, n_devices, n_workers)),
                policy=policy,
                spec=spec,
                dp=cfg.dp,
                task=cfg.task,
                genres=genres,
                user_clip=cfg.user_clip if cfg.user_dp else None,
                aggregation=cfg.aggregation,
            )
            for i in range(min(n_workers, n_devices))
        ]
        pool = ShardPool(specs)
        server = FastServer(pool, cfg, catalog, n_devices, states)
        if resume:
            server.resume()
        server.on_round = on_round
        outcome = server.run()
        write_summary(run_dir, cfg, outcome)
        summary_path = run_dir / "metrics.json"
        summary = json.loads(summary_path.read_text())
        summary["engine"] = ENGINE
        summary["workers"] = len(specs)
        summary["worker_nodes"] = len({node for _, node in pool.placement})
        summary_path.write_text(json.dumps(summary, indent=2, sort_keys=True))
        plot_history(server.history, run_dir / "metrics.png")
        if keep_private and not cfg.local_dp:
            pool.save_private_states()
        if cfg.local_dp:
            # As on Flower: local-DP devices refuse evaluation by default, so the
            # experimenter scores the released model on the devices' data (the oracle),
            # from their private states, written out once here.
            pool.save_private_states()
            from pollinate.simulations.oracle import add_oracle_to_summary

            add_oracle_to_summary(run_dir)
        return outcome
    finally:
        if pool is not None:
            pool.close()
        if started:
            import ray

            ray.shutdown()


def parse_config_value(text: str) -> Any:
    """A command-line value as int, float, None (``none``) or the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text == "none" else text


def config_flags(args: Sequence[str]) -> dict[str, Any]:
    """``--KEY VALUE`` pairs (a benchmark's pass-through ``pollinate simulate`` options) as
    config values, each parsed by :func:`parse_config_value`."""
    if len(args) % 2:
        raise ConfigError(f"options come in --KEY VALUE pairs; {args[-1]!r} has no value")
    pairs = zip(args[::2], args[1::2], strict=True)
    return {key.lstrip("-"): parse_config_value(value) for key, value in pairs}
