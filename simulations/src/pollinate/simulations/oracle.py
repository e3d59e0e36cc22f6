"""The experimenter's own scoring of a finished simulation: the simulation oracle.

In a simulation the person running it holds every device's data, so they can score the
released model on each device's held-out rows directly, outside the federation. That is
what this module does: it rebuilds every simulated device from the run's config, loads the
run's released global parameters (``global_params.npz``) and each device's latest private
parameters from its store (a device that never trained gets the ClientApp's seeded initial
ones), and evaluates as the final Flower round does.

No device releases anything here, and nothing of it is a DP release: it is how a
simulation measures utility when its devices' policy refuses evaluation requests (the
default under local DP, whose per-device noise would drown the figures). A deployment has
no such oracle; ``metrics.json`` names the source of its figures (``final_source``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pollinate.client.app import fresh_model, private_refit
from pollinate.client.device_data import (
    DeviceData,
    DeviceIndex,
    with_interaction_canaries,
    with_validation_in_training,
)
from pollinate.client.evaluation import evaluate_device
from pollinate.client.local_state import DiskStateStore
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.interaction_canaries import InteractionCanaries, expected_canaries
from pollinate.shared.tasks import load_task_for
from pollinate.shared.threads import use_one_thread

#: What ``metrics.json`` says about figures that come from this module.
ORACLE_SOURCE = (
    "simulation oracle: the experimenter scored the released model on every device's "
    "held-out rows outside the federation (no device released these figures)"
)


def run_devices(run: Path, cfg: FederationConfig, n_devices: int) -> list[int]:
    """The devices that took part in ``run``: all but the audit's held-out users."""
    from pollinate.server.audit_material import Holdout

    held = Holdout.load(run)
    n = cfg.num_devices or n_devices
    return [u for u in range(n) if held is None or u not in held.users]


def run_device(run: Path, cfg: FederationConfig, index: DeviceIndex, u: int) -> DeviceData:
    """Device ``u`` of ``run`` as it trained: with the audit's interaction canaries, if
    the run had them, and its validation rows among its training rows under
    ``train-on-validation``."""
    device = index.device(u)
    m, _ = expected_canaries(cfg.audit_canaries, cfg.dp)
    if m:
        device = with_interaction_canaries(device, InteractionCanaries.load(run), u)
    return with_validation_in_training(device) if cfg.train_on_validation else device


#: Config keys that say where a run's data is, which an auditor may point elsewhere (the
#: same file moved, or another copy of the dataset).
DATA_KEYS = ("dataset", "columns", "data-dir")


def run_config(run: Path, data: Mapping[str, Any] | None = None) -> FederationConfig:
    """The config of ``run`` (its ``config.json``), with its data location replaced by
    ``data`` (keys of :data:`DATA_KEYS`) when given."""
    raw = json.loads((run / "config.json").read_text())
    for key, value in (data or {}).items():
        if key not in DATA_KEYS:
            raise PollinateError(f"{key!r} is not a data-location key ({', '.join(DATA_KEYS)})")
        if value is not None:
            raw[key] = value
    return FederationConfig.from_mapping(raw)


def oracle_parts(
    run: Path, part: str = "test", private_scale: float = 1.0
) -> tuple[FederationConfig, list[dict[str, float]]]:
    """Every device's metric sums of ``part`` (see :func:`oracle_device_parts`)."""
    cfg, parts = oracle_device_parts(run, part, private_scale)
    return cfg, [sums for _, sums in parts]


def oracle_device_parts(
    run: Path,
    part: str = "test",
    private_scale: float = 1.0,
    data: Mapping[str, Any] | None = None,
) -> tuple[FederationConfig, list[tuple[int, dict[str, float]]]]:
    """Every device's number of training rows and metric sums of ``part`` for the run
    directory ``run``.

    ``private_scale`` multiplies each device's private vector first (0 measures what the
    global parameters carry alone); it is refused for runs that refit the private
    parameters before evaluating, which would undo it.
    """
    cfg = run_config(run, data)
    if cfg.device_state_dir is None:
        raise PollinateError(f"{run}: config.json names no device-state-dir; nothing to load")
    use_one_thread()
    index = DeviceIndex(load_task_for(cfg))
    with np.load(run / "global_params.npz") as saved:
        glob = {k: saved[k] for k in saved.files}
    flat = cfg.to_flat()
    refit = private_refit(flat)
    if refit is not None and private_scale != 1.0:
        raise PollinateError(
            f"{run}: this run refits the private parameters before it evaluates, which "
            "would undo the private scale; leave it at 1"
        )
    parts: list[tuple[int, dict[str, float]]] = []
    for u in run_devices(run, cfg, index.n_devices):
        device = run_device(run, cfg, index, u)
        model = fresh_model(flat, device, u)
        model.load_global_state(glob)
        private = DiskStateStore(Path(cfg.device_state_dir), f"device-{u}").load(2**31)
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in (private or {}).items():
                params[k].copy_(torch.as_tensor(v))
            for k, p in params.items():
                if k.startswith(model.LOCAL_PREFIXES[0]):
                    p.mul_(private_scale)
        sums = evaluate_device(model, device, part, private_refit=refit)
        parts.append((len(device.split.train), sums))
    return cfg, parts


def add_oracle_to_summary(run: Path) -> dict[str, float]:
    """Score ``run`` with the oracle and record it in its (operator) ``metrics.json``.

    When the devices released no test figures (their policy refused evaluation), the
    oracle's become ``final``; otherwise they go beside the released ones as ``oracle``.
    ``final_source`` says which is which. Nothing is written under ``release/``.
    """
    from pollinate.server.evaluation import add_sums, finalize, standard_errors

    cfg, parts = oracle_parts(run, "test")
    metrics = finalize(cfg.task, add_sums(parts)) if parts else {}
    errors = standard_errors(cfg.task, parts)
    path = run / "metrics.json"
    summary = json.loads(path.read_text())
    if summary.get("final"):
        summary["final_source"] = "noised evaluation releases of the devices"
        summary["oracle"] = {"final": metrics, "final_se": errors, "source": ORACLE_SOURCE}
    else:
        summary.update(final=metrics, final_se=errors, final_source=ORACLE_SOURCE)
    path.write_text(json.dumps(summary, indent=2, sort_keys=True))
    return metrics
