"""Federated training in one process, without Flower: for tuning and for sweeps.

It runs exactly the code of a Flower round (``train_device`` or ``train_device_dp`` on
each Poisson-sampled device, the equal-weight mean or the user-level DP mean, the server
optimizer, ``evaluate_device`` sums) but calls devices directly instead of sending
messages, so a round over ML-100K takes seconds instead of half a minute. It keeps each
device's private parameters and accountant history in memory and writes a ledger in the
same format as a Flower run.

Use it to choose settings (on validation data) and to sweep privacy levels; the figures
that Pollinate reports as federated runs come from ``pollinate simulate``, and
``simulations/benchmarks/RESULTS.md`` says which tool produced each figure.

Devices follow the same policy as the engine gives simulated devices
(:func:`pollinate.simulations.engine.simulation_policy`): their DP settings, their secret
(or, with ``noise-seed``, seeded) noise and sampling, and their ledger events. Evaluation
is the simulation oracle: the experimenter scores every device's held-out rows directly
(no device release; see :mod:`pollinate.simulations.oracle`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pollinate.client.adaptation import adapt_locally
from pollinate.client.app import (
    device_generator,
    local_adaptation,
    local_dp_config,
    noise_generator,
    private_refit,
    train_config,
)
from pollinate.client.device_data import DeviceData, DeviceIndex, with_validation_in_training
from pollinate.client.dp_training import train_device_dp
from pollinate.client.evaluation import evaluate_device
from pollinate.client.training import check_finite, train_device
from pollinate.server.aggregate import UpdateSum, update_norm
from pollinate.server.averaging import IterateAverage
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.server.federation import build_run_model, initial_global_state, server_optimizer
from pollinate.server.privacy import UserPrivacy, privacy_summary
from pollinate.server.sampling import poisson_sample, sampler_source
from pollinate.server.user_dp import ClippedSum, noise_source
from pollinate.shared.config import FederationConfig
from pollinate.shared.environment import record_environment
from pollinate.shared.errors import TrainingDivergedError
from pollinate.shared.privacy.ledger import LedgerWriter, local_event
from pollinate.shared.privacy.randomness import secret_torch_generator, secure_generator
from pollinate.shared.tasks import catalog_of, load_task_for
from pollinate.shared.threads import use_one_thread
from pollinate.simulations.engine import simulation_policy

Arrays = dict[str, np.ndarray]


@dataclass
class InProcessResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    #: Standard errors of ``final`` over the evaluated users (evaluation sampling only).
    final_se: dict[str, float] = field(default_factory=dict)
    #: Each device's final test sums, in device order (for paired comparisons of runs).
    final_parts: list[dict[str, float]] = field(default_factory=list)
    privacy: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def parse_config_value(text: str) -> Any:
    """A command-line value as int, float, None (``none``) or the string itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text == "none" else text


def run_inprocess(
    cfg: FederationConfig,
    *,
    log: Callable[[dict[str, Any]], None] | None = None,
    write_ledger: bool = True,
    on_round: Callable[[int, Arrays, dict[int, Arrays]], None] | None = None,
) -> InProcessResult:
    """Train ``cfg`` in this process; evaluate every ``eval_every`` rounds on all devices.

    ``on_round(round, global_state, private_states)`` is called after each round's
    server step (read-only views: copy what you keep), for diagnostics of the iterates.
    """
    t_start = time.perf_counter()
    use_one_thread()
    task = load_task_for(cfg)
    catalog = catalog_of(task.data)
    index = DeviceIndex(task)
    devices: list[DeviceData] = [index.device(u) for u in range(index.n_devices)]
    if cfg.train_on_validation:
        devices = [with_validation_in_training(d) for d in devices]

    model = build_run_model(cfg, catalog)
    local_names = model.local_parameter_names()
    params = dict(model.named_parameters())
    # Each device's private parameters start as a freshly built model's (seeded per device).
    # They are kept as numpy copies: keeping torch clones of them held on to about the
    # size of each discarded model (1.66 GB for 2,000 interest models of Beauty's 12,101
    # items, 0.24 GB with numpy copies), which ran a 22,363-device run out of memory.
    private: dict[int, dict[str, np.ndarray]] = {}
    with torch.random.fork_rng():
        for u in range(len(devices)):
            torch.manual_seed(cfg.seed * 1_000_003 + u)
            init = dict(build_run_model(cfg, catalog).named_parameters())
            private[u] = {k: init[k].detach().numpy().copy() for k in local_names}
    glob = initial_global_state(cfg, catalog)
    spec = {n: (tuple(a.shape), str(a.dtype)) for n, a in glob.items()}
    opt = server_optimizer(cfg, catalog)
    average = IterateAverage(cfg.server_ema) if cfg.server_ema is not None else None
    sampler = sampler_source(private=cfg.dp != "none", seed=cfg.seed, noise_seed=cfg.noise_seed)
    rng = sampler.rng
    gen = torch.Generator().manual_seed(cfg.seed)
    flat = cfg.to_flat()
    train_cfg = train_config(flat)
    refit = private_refit(flat)
    adapt = local_adaptation(flat)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    record_environment(out)
    ledger_path = out / "ledger.jsonl"
    if ledger_path.exists():
        ledger_path.unlink()
    ledger = LedgerWriter(ledger_path) if write_ledger and cfg.dp != "none" else None
    user = UserPrivacy.from_config(cfg, len(devices)) if cfg.user_dp else None
    user_noise = noise_source(cfg.noise_seed, role="user-level noise")
    policy = simulation_policy(cfg)
    local_dp = local_dp_config(policy, flat) if cfg.local_dp else None
    histories: dict[int, list[tuple[float, float, int]]] = {u: [] for u in range(len(devices))}
    if cfg.dp != "none" and cfg.noise_seed is None:
        # Negatives and dropout masks of a private run: secret, as on a Flower device.
        gen = secret_torch_generator(secure_generator())

    def released() -> Arrays:
        return glob if average is None else average.value(glob)

    def load(u: int, state: Arrays | None = None) -> None:
        model.load_global_state(glob if state is None else state)
        with torch.no_grad():
            for k in local_names:
                params[k].copy_(torch.from_numpy(private[u][k]))

    def evaluation_sums(round_: int, part: str) -> list[dict[str, float]]:
        sums = []
        state = released()
        for u, dev in enumerate(devices):
            load(u, state)
            if adapt is not None:
                # As the ClientApp does: the same generator, and the adapted copy is
                # dropped (load() restores the model before anything else uses it).
                gen_u = device_generator(flat, round_, u, salt=1)
                adapt_locally(model, dev, train_cfg, adapt, gen_u)
            sums.append(evaluate_device(model, dev, part, private_refit=refit))
        return sums

    def evaluate(round_: int, part: str) -> dict[str, float]:
        return finalize(cfg.task, add_sums(evaluation_sums(round_, part)))

    result = InProcessResult()

    def emit(entry: dict[str, Any]) -> None:
        result.history.append(entry)
        if log is not None:
            log(entry)

    if cfg.eval_every:
        emit({"round": 0, "eval": evaluate(0, "valid")})
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        if user is not None and not user.next_round_allowed():
            emit({"round": r, "stopped": "user-level budget"})
            break
        sampled = poisson_sample(list(range(len(devices))), cfg.sample_rate, rng)
        # A running sum: the round holds one dense update at a time, never all of them.
        total = UpdateSum(spec) if user is None else ClippedSum(spec, user.clip)
        losses: list[float] = []
        stopped = diverged = examples = 0
        eps_local: list[float] = []
        for u in sampled:
            load(u)
            if local_dp is None:
                try:
                    outcome = train_device(model, devices[u], train_cfg, gen)
                except TrainingDivergedError:
                    diverged += 1  # as on Flower: the device fails, its state is kept
                    continue
                update: Arrays | None = outcome.update
                n_train = outcome.n_examples
                losses.append(outcome.loss)
            else:
                dp_out = train_device_dp(
                    model, devices[u], train_cfg, local_dp, histories[u], gen,
                    noise_rng=noise_generator(policy, r, u, salt=3),
                )  # fmt: skip
                update = dp_out.update
                n_train = dp_out.n_examples
                eps_local.append(dp_out.epsilon)
                if update is None:
                    stopped += int(dp_out.stopped)
                    continue
                histories[u] = dp_out.history
                if ledger is not None:
                    ledger.append(
                        local_event(
                            round_=r,
                            device=str(u),
                            release=dp_out.history[-1],
                            clip_norm=local_dp.clip_norm,
                            delta=dp_out.plan.delta,
                            epsilon=dp_out.epsilon,
                        )
                    )
                try:
                    check_finite(model, update)  # charged above; neither kept nor sent
                except TrainingDivergedError:
                    diverged += 1
                    continue
            private[u] = {k: params[k].detach().numpy().copy() for k in local_names}
            examples += n_train
            assert update is not None
            if cfg.aggregation == "examples" and n_train < 1:
                continue
            total.add(update, float(n_train) if cfg.aggregation == "examples" else 1.0)
        entry: dict[str, Any] = {
            "round": r,
            "sampled": len(sampled),
            "aggregated": total.count,
            "examples": examples,
        }
        if diverged:
            entry["failed"] = diverged
        # One device whose update dwarfs the others' can steer an adaptive server
        # optimizer alone; the median and the largest show when that happens (None in
        # an empty round, as in the Flower server's log).
        norms = total.norms
        entry["update_norm_median"] = float(np.median(norms)) if norms else None
        entry["update_norm_max"] = max(norms, default=None)
        if user is None:
            if total.count:
                glob = opt.step(glob, total.mean())
        else:
            assert isinstance(total, ClippedSum)
            delta = total.noisy_mean(
                noise_multiplier=user.noise_multiplier,
                expected_devices=user.expected_devices,
                rng=user_noise.rng,
            )
            event = user.release(r)
            if ledger is not None:
                ledger.append(event)
            glob = opt.step(glob, delta)
            entry["user_epsilon"] = event.epsilon
        if average is not None:
            average.update(glob)
        if on_round is not None:
            on_round(r, glob, private)
        if losses:
            entry["train_loss"] = float(np.mean(losses))
        if local_dp is not None:
            entry["dp_stopped"] = stopped
            entry["local_epsilon_max"] = max(eps_local, default=None)
        entry["seconds"] = round(time.perf_counter() - t0, 2)
        if cfg.eval_every and (r % cfg.eval_every == 0 or r == cfg.rounds):
            entry["eval"] = evaluate(r, "valid")
            private_norms = [update_norm(state) for state in private.values()]
            # The private vectors train without L2 by default: a runaway one shows here.
            entry["private_norm_median"] = float(np.median(private_norms))
            entry["private_norm_max"] = max(private_norms)
        emit(entry)
    final_parts = evaluation_sums(cfg.rounds + 1, "test")
    result.final = finalize(cfg.task, add_sums(final_parts))
    result.final_se = standard_errors(cfg.task, final_parts)
    result.final_parts = final_parts
    if ledger is not None:
        result.privacy = privacy_summary(ledger_path, len(devices))
    if user is not None:
        result.privacy.setdefault("user", {}).update(user.describe())
    if local_dp is not None:
        result.privacy.setdefault("local", {})["delta_rule"] = (
            "min(1e-5, 1/(10 n)) per device" if cfg.local_delta is None else cfg.local_delta
        )
    result.privacy["sampling"] = sampler.description
    result.privacy["evaluation"] = (
        "simulation oracle: the experimenter scored every device's held-out rows directly "
        "(no device released these figures)"
    )
    result.seconds = time.perf_counter() - t_start
    summary = {
        "tool": "pollinate.simulations.inprocess (no Flower messaging)",
        "dataset": cfg.dataset,
        "model": cfg.model,
        "task": cfg.task,
        "fold": cfg.fold,
        "final": result.final,
        "final_se": result.final_se,
        "privacy": result.privacy,
        "history": result.history,
        "seconds": result.seconds,
        "config": cfg.to_flat(),
    }
    (out / "inprocess.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
    return result
