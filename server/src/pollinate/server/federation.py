"""The server's round loop, written against Flower's ``Grid`` (Message API).

``run_server`` is what the ServerApp's ``main`` calls, in a simulation and in a
deployment alike. It never sees raw events or private parameters: it sends global
parameters down, receives updates to them, and receives evaluation sums.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pollinate.server.aggregate import UpdateSum
from pollinate.server.averaging import IterateAverage
from pollinate.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.server.optimizers import ServerOptimizer, make_server_optimizer
from pollinate.server.privacy import UserPrivacy, privacy_summary
from pollinate.server.runlog import JsonlWriter, message_entry
from pollinate.server.sampling import poisson_sample
from pollinate.server.user_dp import ClippedSum, noise_source
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.ledger import LedgerWriter, read_ledger
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import (
    CONFIG_RECORD,
    GLOBAL_RECORD,
    UPDATE_RECORD,
    AllowListError,
    ParamSpec,
    arrays_to_record,
    check_incoming,
    integer,
    record_to_arrays,
    scalar,
    spec_of,
)

Arrays = dict[str, np.ndarray]

#: Keys of the run config that devices need; everything else stays on the server.
DEVICE_KEYS = (
    "dataset", "data-dir", "synthetic-users", "synthetic-items", "task", "fold", "model",
    "embedding-dim", "learn-global-mean", "history-len", "dropout", "local-epochs",
    "max-local-steps", "train-on-validation", "batch-size",
    "lr-global", "lr-local", "lr-encoder", "weight-decay", "loss", "negatives", "private-refit",
    "refit-reg", "encoder-max-grad-norm", "device-optimizer", "private-weight-decay",
    "seed", "device-state-dir", "adapt-epochs", "adapt-lr-scale",
    "rounds",
    "dp", "local-noise", "local-epsilon", "local-clip", "local-epsilon-budget", "local-delta",
    "local-accountant", "local-grad-sample-mode", "noise-seed",
)  # fmt: skip

#: Config key of the run ledger's path, sent to simulated devices only (see client.app).
RUN_LEDGER_KEY = "run-ledger"


class FederationError(PollinateError):
    """The federation cannot go on (too few devices, every reply failed, ...)."""


@dataclass
class RoundResult:
    aggregated: int = 0
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    device_seconds: float = 0.0
    rejected: int = 0
    failed: int = 0
    dp_stopped: int = 0
    local_epsilons: list[float] = field(default_factory=list)
    update_norms: list[float] = field(default_factory=list)
    user_epsilon: float | None = None


def build_run_model(cfg: FederationConfig, catalog: Catalog) -> RecModel:
    """A one-user model of the run's configuration (initialised from torch's global RNG)."""
    return build_model(
        cfg.model,
        n_users=1,
        n_items=catalog.n_items,
        dim=cfg.embedding_dim,
        item_genres=catalog.item_genres,
        **(
            {"global_mean": catalog.rating_midpoint, "learn_global_mean": cfg.learn_global_mean}
            if cfg.model == "mf"
            else {}
        ),
        **({"history_len": cfg.history_len} if cfg.model == "interest" else {}),
        **({"dropout": cfg.dropout} if cfg.dropout is not None else {}),
    )


def initial_global_state(cfg: FederationConfig, catalog: Catalog) -> Arrays:
    """Global parameters of a freshly built model, seeded by the run seed."""
    with torch.random.fork_rng():
        torch.manual_seed(cfg.seed)
        model = build_run_model(cfg, catalog)
    return model.global_state()


def server_optimizer(cfg: FederationConfig, catalog: Catalog) -> ServerOptimizer:
    """The run's server optimizer, with the encoder at ``server_lr_encoder`` when set."""
    by_array: dict[str, float] = {}
    if cfg.server_lr_encoder is not None:
        with torch.random.fork_rng():  # building a model draws from torch's global RNG
            names = build_run_model(cfg, catalog).encoder_parameter_names()
        by_array = dict.fromkeys(names, cfg.server_lr_encoder)
    return make_server_optimizer(
        cfg.server_opt, cfg.effective_server_lr, cfg.server_tau, lr_by_array=by_array
    )


def wait_for_nodes(grid: Grid, expected: int, timeout: float) -> list[int]:
    """Block until ``expected`` nodes are connected, so sampling sees all of them."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= expected:
            return nodes
        if time.monotonic() > deadline:
            raise FederationError(
                f"only {len(nodes)} of {expected} devices connected within {timeout:.0f}s; "
                "start more SuperNodes or lower --num-devices"
            )
        time.sleep(0.5)


class Server:
    """State of one federated run on the server side."""

    def __init__(self, grid: Grid, cfg: FederationConfig, catalog: Catalog, n_devices: int):
        self.grid = grid
        self.cfg = cfg
        self.catalog = catalog
        self.n_devices = n_devices
        self.run_dir = Path(cfg.out)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.params = initial_global_state(cfg, catalog)
        self.spec: ParamSpec = spec_of(self.params)
        self.optimizer = server_optimizer(cfg, catalog)
        self.average = IterateAverage(cfg.server_ema) if cfg.server_ema is not None else None
        self.rng = np.random.default_rng(cfg.seed)
        self.start_round = 1
        self.history: list[dict[str, Any]] = []
        flat = cfg.to_flat()
        self.device_config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
        self.ledger_path = self.run_dir / "ledger.jsonl"
        self.device_config[RUN_LEDGER_KEY] = str(self.ledger_path.resolve())
        self.user_privacy = UserPrivacy.from_config(cfg, n_devices) if cfg.user_dp else None
        self.noise = noise_source(cfg.noise_seed, role="user-level noise")
        self.stopped_reason: str | None = None

    # -- persistence ---------------------------------------------------------------
    def resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir)
        if spec_of(ckpt.params) != self.spec:
            raise FederationError("the checkpoint's parameters do not match this model")
        self.params = ckpt.params
        self.optimizer.load_state_dict(ckpt.optimizer)
        if self.average is not None:
            self.average.load_state_dict(ckpt.average)
        elif ckpt.average:
            raise FederationError(
                "the checkpoint holds an iterate average but the config sets no --server-ema"
            )
        self.rng.bit_generator.state = ckpt.rng_state
        self.history = ckpt.extra.get("history", [])
        self.start_round = ckpt.round + 1
        noise_state = ckpt.extra.get("noise_rng_state")
        if noise_state is not None and self.cfg.noise_seed is not None:
            self.noise.rng.bit_generator.state = noise_state
        if self.user_privacy is not None and self.ledger_path.exists():
            # Every round ever released counts, including any released after the last
            # checkpoint and released again now: ε is over-counted, never under-counted.
            self.user_privacy.rounds = [
                (e.noise_multiplier, e.sample_rate)
                for e in read_ledger(self.ledger_path)
                if e.layer == "user"
            ]

    def checkpoint(self, round_: int) -> None:
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                round=round_,
                params=self.params,
                optimizer=self.optimizer.state_dict(),
                average=self.average.state_dict() if self.average is not None else {},
                rng_state=dict(self.rng.bit_generator.state),
                extra={
                    "history": self.history,
                    # A secure generator's state is never written to disk: it would let
                    # whoever reads the checkpoint reconstruct the noise.
                    "noise_rng_state": dict(self.noise.rng.bit_generator.state)
                    if self.cfg.noise_seed is not None
                    else None,
                },
            ),
        )

    def released(self) -> Arrays:
        """The model the run releases: the iterate average with ``--server-ema``, else the
        live iterate. Devices train from the live iterate and are evaluated on this one."""
        return self.params if self.average is None else self.average.value(self.params)

    # -- messaging -----------------------------------------------------------------
    def _content(self, round_: int, params: Arrays, extra: dict[str, Any]) -> RecordDict:
        config = dict(self.device_config, round=round_, **extra)
        return RecordDict(
            {GLOBAL_RECORD: arrays_to_record(params), CONFIG_RECORD: ConfigRecord(config)}
        )

    def _exchange(
        self, round_: int, nodes: Sequence[int], kind: str, extra: dict[str, Any], log: JsonlWriter
    ) -> Iterable[Message]:
        msg_type = {
            "train": MessageType.TRAIN,
            "evaluate": MessageType.EVALUATE,
            "enroll": f"{MessageType.QUERY}.enroll",
        }[kind]
        messages = []
        params = self.released() if kind == "evaluate" else self.params
        for node in nodes:
            content = self._content(round_, params, extra) if kind != "enroll" else RecordDict()
            messages.append(Message(content, node, msg_type, group_id=str(round_)))
            log.write(message_entry(round_, "down", node, kind, content))
        replies = list(self.grid.send_and_receive(messages))
        for reply in replies:
            if not reply.has_error():
                log.write(
                    message_entry(round_, "up", reply.metadata.src_node_id, kind, reply.content)
                )
        return replies

    def round_sum(self) -> UpdateSum:
        """An empty running sum for one round: clipped under user-level DP, plain otherwise."""
        if self.user_privacy is None:
            return UpdateSum(self.spec)
        return ClippedSum(self.spec, self.user_privacy.clip)

    def train_round(self, round_: int, nodes: Sequence[int], log: JsonlWriter) -> RoundResult:
        result = RoundResult()
        total = self.round_sum()
        for reply in self._exchange(round_, nodes, "train", {}, log):
            if reply.has_error():
                result.failed += 1
                continue
            try:
                check_incoming(reply.content, kind="train", spec=self.spec)
            except AllowListError:
                result.rejected += 1
                continue
            metrics = reply.content.metric_records["metrics"]
            if "local-epsilon" in metrics:
                result.local_epsilons.append(scalar(metrics["local-epsilon"], "local-epsilon"))
            if UPDATE_RECORD not in reply.content.array_records:
                result.dp_stopped += 1  # check_incoming allows this only with dp-stopped=1
                continue
            examples = integer(metrics["num-examples"], "num-examples")
            if self.cfg.aggregation == "examples" and examples < 1:
                result.rejected += 1  # nothing to weight by: an update of no data
                continue
            weight = float(examples) if self.cfg.aggregation == "examples" else 1.0
            total.add(record_to_arrays(reply.content.array_records[UPDATE_RECORD]), weight)
            result.aggregated += 1
            if "train-loss" in metrics:
                result.losses.append(scalar(metrics["train-loss"], "train-loss"))
            result.examples += examples
            result.device_seconds += scalar(metrics["train-seconds"], "train-seconds")
        self.aggregate(round_, result, total)
        return result

    def aggregate(self, round_: int, result: RoundResult, total: UpdateSum | None = None) -> None:
        """Apply the round's sum of updates: a plain equal-weight mean, or the user-level DP one.

        Under user-level DP every round releases noise, even one that no device joined,
        and the ledger event is appended before the new parameters are used anywhere.
        """
        total = self.round_sum() if total is None else total
        result.update_norms = total.norms
        up = self.user_privacy
        if up is None:
            if total.count:
                self.params = self.optimizer.step(self.params, total.mean())
        else:
            assert isinstance(total, ClippedSum)
            delta = total.noisy_mean(
                noise_multiplier=up.noise_multiplier,
                expected_devices=up.expected_devices,
                rng=self.noise.rng,
            )
            event = up.release(round_)
            LedgerWriter(self.ledger_path).append(event)
            result.user_epsilon = event.epsilon
            self.params = self.optimizer.step(self.params, delta)
        if self.average is not None:
            self.average.update(self.params)  # every round, empty ones too

    def evaluate(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> dict[str, float]:
        return finalize(self.cfg.task, add_sums(self.evaluation_sums(round_, nodes, part, log)))

    def evaluation_sums(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> list[dict[str, float]]:
        """The metric sums of every device that replied within the allow-list."""
        sums = []
        for reply in self._exchange(round_, nodes, "evaluate", {"part": part}, log):
            if reply.has_error():
                continue
            try:
                check_incoming(reply.content, kind="evaluate", spec=self.spec)
            except AllowListError:
                continue
            metrics = reply.content.metric_records["metrics"]
            sums.append({k: scalar(v, k) for k, v in metrics.items()})
        return sums

    def enroll(self, nodes: Sequence[int], log: JsonlWriter) -> list[int]:
        """Ask every node for its device key; return the nodes ordered by key.

        Flower's node ids change from one start to the next; the keys do not, so a
        seeded Poisson sample over this order picks the same devices after a resume.
        """
        keys: dict[int, int] = {}
        for reply in self._exchange(0, nodes, "enroll", {}, log):
            if reply.has_error():
                continue
            try:
                check_incoming(reply.content, kind="enroll", spec={})
            except AllowListError:
                continue
            key = reply.content.metric_records["metrics"]["device-key"]
            keys[reply.metadata.src_node_id] = integer(key, "device-key")
        if len(set(keys.values())) != len(keys):
            raise FederationError("two devices enrolled with the same device key")
        if len(keys) < len(nodes):
            raise FederationError(
                f"{len(nodes) - len(keys)} of {len(nodes)} devices did not enroll; "
                "check the SuperNodes' logs"
            )
        return sorted(keys, key=keys.__getitem__)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        # A fresh run starts its logs afresh; a resumed one keeps the checkpointed rounds.
        keep = self.start_round - 1 if self.start_round > 1 else None
        metrics_log = JsonlWriter(self.run_dir / "metrics.jsonl", keep_through_round=keep)
        if keep is None and self.ledger_path.exists():
            # A new run in an old directory: keep the old ledger beside, untouched.
            self.ledger_path.rename(self.run_dir / f"ledger.before-{time.time_ns()}.jsonl")
        msg_log = JsonlWriter(self.run_dir / "messages.jsonl", keep_through_round=keep)
        t_enroll = time.perf_counter()
        nodes = self.enroll(wait_for_nodes(self.grid, self.n_devices, cfg.wait_timeout), msg_log)
        t_enroll = time.perf_counter() - t_enroll
        progress = Progress(
            TextColumn("[bold]federated rounds"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            disable=not cfg.progress,
        )
        with progress:
            bar = progress.add_task(
                "rounds", total=cfg.rounds, completed=self.start_round - 1, status=""
            )
            if cfg.eval_every and self.start_round == 1:
                # The untrained model, on the same kind of sample, as the baseline.
                eval_nodes = poisson_sample(nodes, cfg.eval_sample_rate, self.rng)
                entry0 = {
                    "round": 0,
                    "sampled": 0,
                    "eval_devices": len(eval_nodes),
                    "eval": self.evaluate(0, eval_nodes, "valid", msg_log),
                }
                metrics_log.write(entry0)
                self.history.append(entry0)
            for round_ in range(self.start_round, cfg.rounds + 1):
                t0 = time.perf_counter()
                if self.user_privacy is not None and not self.user_privacy.next_round_allowed():
                    self.stopped_reason = (
                        f"user-level budget: round {round_} would spend ε = "
                        f"{self.user_privacy.epsilon_after_next():.4g} > "
                        f"{self.user_privacy.budget} (δ = {self.user_privacy.delta:.3g})"
                    )
                    progress.update(bar, status=f"stopped: {self.stopped_reason}")
                    break
                sampled = poisson_sample(nodes, cfg.sample_rate, self.rng)
                if sampled:
                    result = self.train_round(round_, sampled, msg_log)
                else:
                    result = RoundResult()
                    self.aggregate(round_, result)
                t_train = time.perf_counter() - t0
                entry: dict[str, Any] = {
                    "round": round_,
                    "sampled": len(sampled),
                    "aggregated": result.aggregated,
                    "rejected": result.rejected,
                    "failed": result.failed,
                    "train_loss": float(np.mean(result.losses)) if result.losses else None,
                    "examples": result.examples,
                    "train_wall_s": t_train,
                    "device_train_s": result.device_seconds,
                }
                if cfg.local_dp:
                    entry["dp_stopped"] = result.dp_stopped
                    entry["local_epsilon_max"] = max(result.local_epsilons, default=None)
                norms = result.update_norms
                entry["update_norm_median"] = float(np.median(norms)) if norms else None
                entry["update_norm_max"] = max(norms, default=None)
                if self.user_privacy is not None:
                    entry["user_epsilon"] = result.user_epsilon
                    entry["clipped_fraction"] = (
                        float(np.mean(np.asarray(result.update_norms) > self.user_privacy.clip))
                        if result.update_norms
                        else None
                    )
                if cfg.eval_every and round_ % cfg.eval_every == 0:
                    eval_nodes = poisson_sample(nodes, cfg.eval_sample_rate, self.rng)
                    entry["eval_devices"] = len(eval_nodes)
                    entry["eval"] = self.evaluate(round_, eval_nodes, "valid", msg_log)
                entry["wall_s"] = time.perf_counter() - t0
                metrics_log.write(entry)
                self.history.append(entry)
                self.checkpoint(round_)
                shown = entry.get("eval") or {}
                status = ", ".join(f"{k}={v:.4f}" for k, v in list(shown.items())[:2])
                progress.update(bar, advance=1, status=f"sampled {len(sampled)} {status}")
        t0 = time.perf_counter()
        final_parts = self.evaluation_sums(cfg.rounds + 1, nodes, "test", msg_log)
        final = finalize(cfg.task, add_sums(final_parts))
        final_s = time.perf_counter() - t0
        metrics_log.close()
        msg_log.close()
        np.savez(self.run_dir / "global_params.npz", **self.released())  # type: ignore[arg-type]
        return {
            "final": final,
            "final_se": standard_errors(cfg.task, final_parts),
            "final_eval_s": final_s,
            "enroll_s": t_enroll,
            "devices": len(nodes),
            "rounds_completed": len([h for h in self.history if h["round"] >= 1]),
            "stopped_reason": self.stopped_reason,
            "privacy": self.privacy_report(len(nodes)),
        }

    def privacy_report(self, n_devices: int) -> dict[str, Any]:
        """What metrics.json says about privacy: ε per layer from the ledger, and how."""
        cfg = self.cfg
        report: dict[str, Any] = {"dp": cfg.dp}
        if cfg.dp == "none":
            report["statement"] = "no differential privacy: updates are sent and used as is"
            return report
        report.update(privacy_summary(self.ledger_path, n_devices))
        if self.user_privacy is not None:
            report.setdefault("user", {}).update(self.user_privacy.describe())
            report["user"]["noise_source"] = self.noise.description
        if cfg.local_dp:
            local = report.setdefault("local", {"epsilon_max": 0.0, "epsilon_median": 0.0})
            local.update(
                {
                    "clip": cfg.local_clip,
                    "noise_multiplier": cfg.local_noise,
                    "target_epsilon": cfg.local_epsilon,
                    "budget": cfg.local_epsilon_budget,
                    "noise_source": "device: "
                    + (
                        f"SEEDED with {cfg.noise_seed} (simulation only)"
                        if cfg.noise_seed is not None
                        else "secure (seeded from os.urandom)"
                    ),
                }
            )
        return report


def write_summary(run_dir: Path, cfg: FederationConfig, outcome: dict[str, Any]) -> None:
    summary = {
        "dataset": cfg.dataset,
        "model": cfg.model,
        "task": cfg.task,
        "fold": cfg.fold,
        "rounds": cfg.rounds,
        "devices": outcome["devices"],
        "rounds_completed": outcome.get("rounds_completed"),
        "stopped_reason": outcome.get("stopped_reason"),
        "final": outcome["final"],
        "final_se": outcome.get("final_se", {}),
        "privacy": outcome.get("privacy", {"dp": cfg.dp}),
        "config": cfg.to_flat(),
    }
    (run_dir / "metrics.json").write_text(json.dumps(summary, indent=2, sort_keys=True))
