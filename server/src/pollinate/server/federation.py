"""The server's round loop, written against Flower's ``Grid`` (Message API).

``run_server`` is what the ServerApp's ``main`` calls, in a simulation and in a
deployment alike. It never sees raw events or private parameters: it sends global
parameters down, receives updates to them, and receives evaluation sums.

Every reply goes through :func:`~pollinate.shared.wire.check_incoming` for the run's
``--dp`` mode: a malformed one is rejected and a refusal counted, each by reason, in the
round's entry of ``metrics.jsonl`` and as a ``"verdict"`` line of ``messages.jsonl``;
neither stops the run. The run directory keeps the operator's files (``metrics.json``,
``metrics.jsonl``, ``messages.jsonl``, ``ledger.jsonl``, the checkpoint) and writes what
may be published into ``release/`` (:func:`write_release`).
"""

from __future__ import annotations

import json
import logging
import re
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
from pollinate.server.audit_material import HOLDOUT_FILE, Holdout, UploadProbe
from pollinate.server.averaging import IterateAverage
from pollinate.server.canaries import UserCanaries, save_initial
from pollinate.server.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from pollinate.server.evaluation import add_sums, finalize, standard_errors
from pollinate.server.optimizers import ServerOptimizer, make_server_optimizer
from pollinate.server.privacy import UserPrivacy, guarantees, privacy_summary
from pollinate.server.runlog import JsonlWriter, message_entry, verdict_entry
from pollinate.server.sampling import poisson_sample, sampler_source
from pollinate.server.user_dp import ClippedSum, noise_source
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.interaction_canaries import expected_canaries
from pollinate.shared.privacy.ledger import LedgerWriter
from pollinate.shared.privacy.randomness import SECURE_DESCRIPTION, checkpoint_state
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import (
    CONFIG_RECORD,
    GLOBAL_RECORD,
    AllowListError,
    ParamSpec,
    Reply,
    arrays_to_record,
    check_incoming,
    spec_of,
)

Arrays = dict[str, np.ndarray]

#: Keys of the run config that devices need; everything else stays on the server.
DEVICE_KEYS = (
    "dataset", "columns", "data-dir", "synthetic-users", "synthetic-items", "task", "fold", "model",
    "embedding-dim", "learn-global-mean", "history-len", "dropout", "local-epochs",
    "max-local-steps", "train-on-validation", "batch-size",
    "lr-global", "lr-local", "lr-encoder", "weight-decay", "loss", "negatives", "private-refit",
    "refit-reg", "encoder-max-grad-norm", "device-optimizer", "private-weight-decay",
    "seed", "adapt-epochs", "adapt-lr-scale",
    "rounds",
    # The run's local-DP settings, sent as a request: a device trains with its own policy
    # and refuses a request that would weaken it (pollinate.client.policy). Where a device
    # keeps its state, where it logs, and any noise seed are the device's own settings
    # (its node config), never sent.
    "dp", "local-noise", "local-epsilon", "local-clip", "local-epsilon-budget", "local-delta",
    "local-accountant", "local-grad-sample-mode",
)  # fmt: skip


#: The part of the run directory that may be released (see :func:`write_release`).
RELEASE_DIR = "release"

#: Run-config keys that stay with the operator: local paths, the noise seed (whoever knows
#: it can subtract the noise), and settings of the operator's machine.
PRIVATE_CONFIG_KEYS = ("data-dir", "out", "device-state-dir", "noise-seed", "progress",
                       "wait-timeout")  # fmt: skip

#: What ``privacy.json`` says of the evaluation figures, per ``--dp`` mode.
EVALUATION_COVERAGE = {
    "none": "no differential privacy: evaluation sums reach the server as computed",
    "user": "not covered: evaluation sums reach the trusted server un-noised; kept in the "
    "operator files",
    "local": "covered: every evaluation reply is a noised release of its device, composed "
    "into the device's local ε (ledger events of kind 'evaluate')",
}

logger = logging.getLogger(__name__)


class FederationError(PollinateError):
    """The federation cannot go on (too few devices, every reply failed, ...)."""


def no_examples_entry(round_: int, node: int) -> dict[str, Any]:
    """The log line of a reply rejected because it has no examples to weight it by."""
    return verdict_entry(round_, node, "train", "rejected", "no-examples",
                         "an update of no examples cannot be weighted")  # fmt: skip


def _count(counter: dict[str, int], key: str) -> None:
    counter[key] = counter.get(key, 0) + 1


@dataclass
class RoundResult:
    aggregated: int = 0
    losses: list[float] = field(default_factory=list)
    examples: int = 0
    device_seconds: float = 0.0
    #: Malformed replies (never used): their total, and their count by reason.
    rejected: int = 0
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    #: Well-formed refusals, by reason (a key of ``wire.REFUSAL_CODES``).
    refused: dict[str, int] = field(default_factory=dict)
    failed: int = 0
    dp_stopped: int = 0
    local_epsilons: list[float] = field(default_factory=list)
    update_norms: list[float] = field(default_factory=list)
    user_epsilon: float | None = None
    #: Canary devices that joined the round (audit runs only; operator files).
    canaries: int = 0

    def use(self, got: Reply, total: UpdateSum, aggregation: str) -> str | None:
        """Count a checked training reply and add its update to ``total``; return the
        verdict reason when it cannot be used (``"dp-stopped"``: it carries no update;
        ``"no-examples"``: nothing to weight it by), else ``None``. The Flower server and
        the fast engine's shards both call it, so they treat a reply alike."""
        metrics = got.metrics
        if "local-epsilon" in metrics:
            self.local_epsilons.append(float(metrics["local-epsilon"]))
        if got.update is None:
            self.dp_stopped += 1  # check_incoming allows this only with dp-stopped=1
            return "dp-stopped"
        examples = int(metrics.get("num-examples", 0))
        if aggregation == "examples" and examples < 1:
            _count(self.rejected_reasons, "no-examples")
            return "no-examples"
        total.add(got.update, float(examples) if aggregation == "examples" else 1.0, got.norm)
        self.aggregated += 1
        if "train-loss" in metrics:
            self.losses.append(float(metrics["train-loss"]))
        self.examples += examples
        self.device_seconds += float(metrics.get("train-seconds", 0.0))
        return None


@dataclass
class EvaluationRound:
    """The evaluation replies of one round, sorted into what can be used and what not."""

    #: Each accepted device's sums (its ``local-epsilon``, if any, removed).
    parts: list[dict[str, float]] = field(default_factory=list)
    #: Per part: whether it is a noised interaction-level DP release.
    noised: list[bool] = field(default_factory=list)
    rejected_reasons: dict[str, int] = field(default_factory=dict)
    refused: dict[str, int] = field(default_factory=dict)
    failed: int = 0

    def log_entry(self) -> dict[str, Any]:
        return {"eval_rejected": dict(self.rejected_reasons), "eval_refused": dict(self.refused)}


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

    #: What runs the devices, written into the checkpoint: the devices' private state is
    #: kept where that engine keeps it, so only the same engine can resume the run.
    engine = "flower"

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
        # Under DP the device sampler is secret (a CSPRNG), unless --noise-seed (simulation).
        self.sampler = sampler_source(
            private=cfg.dp != "none", seed=cfg.seed, noise_seed=cfg.noise_seed
        )
        self.rng = self.sampler.rng
        self.sampler_description = self.sampler.description
        self.start_round = 1
        self.history: list[dict[str, Any]] = []
        flat = cfg.to_flat()
        self.device_config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
        self.ledger_path = self.run_dir / "ledger.jsonl"
        # Users held out for the release-side membership attack (audit only); their coins
        # come from the sampler, which is secret under DP.
        self.holdout = (
            Holdout.draw(cfg.audit_holdout, n_devices, self.rng) if cfg.audit_holdout else None
        )
        participants = n_devices - (len(self.holdout.users) if self.holdout else 0)
        self.user_privacy = UserPrivacy.from_config(cfg, participants) if cfg.user_dp else None
        self.noise = noise_source(cfg.noise_seed, role="user-level noise")
        self.stopped_reason: str | None = None
        # Canary devices for the empirical audit; their coins come from the sampler, which
        # is secret under DP.
        local_canaries, user_canaries = expected_canaries(cfg.audit_canaries, cfg.dp)
        self.canaries = (
            UserCanaries.create(
                user_canaries,
                self.spec,
                cfg.user_clip,
                self.rng,
                # The interaction canaries' items (and sink) are the catalogue's last rows.
                free_items_from=catalog.n_items - local_canaries - 1 if local_canaries else None,
            )
            if user_canaries
            else None
        )
        # The curious server's view of each device's first upload, kept for the audit.
        self.probe = UploadProbe(catalog.n_items) if cfg.audit_canaries else None
        self.device_keys: dict[int, int] = {}

    # -- persistence ---------------------------------------------------------------
    def resume(self) -> None:
        ckpt = load_checkpoint(self.run_dir)
        wrote = ckpt.extra.get("engine", "flower")  # checkpoints before the key: Flower's
        if wrote != self.engine:
            raise FederationError(
                f"this run was checkpointed by the {wrote} engine, which keeps the devices' "
                f"private state its own way; resume it with --engine {wrote}"
            )
        if spec_of(ckpt.params) != self.spec:
            raise FederationError("the checkpoint's parameters do not match this model")
        if self.canaries is not None:
            self.canaries = UserCanaries.load(self.run_dir)  # the same coins as before
        if self.holdout is not None:
            held = Holdout.load(self.run_dir)
            if held is None:
                raise FederationError(
                    f"{self.run_dir / HOLDOUT_FILE} is missing: the run cannot be resumed with "
                    "the same held-out users"
                )
            self.holdout = held
        if self.probe is not None:
            self.probe.load_existing(self.run_dir)
        self.params = ckpt.params
        self.optimizer.load_state_dict(ckpt.optimizer)
        if self.average is not None:
            self.average.load_state_dict(ckpt.average)
        elif ckpt.average:
            raise FederationError(
                "the checkpoint holds an iterate average but the config sets no --server-ema"
            )
        if not self.sampler.secure:
            if ckpt.rng_state is None:
                raise FederationError(
                    "the checkpoint holds no device-sampler state (it was written by a run "
                    "whose sampler was secret); resume it with the same --dp and --noise-seed"
                )
            try:
                self.rng.bit_generator.state = ckpt.rng_state
            except (TypeError, ValueError) as exc:
                raise FederationError(
                    f"the checkpoint's device-sampler state does not fit this run ({exc}); "
                    "resume it with the same --dp and --noise-seed"
                ) from None
        # A secure sampler or noise generator is never restored: this run drew fresh ones.
        self.history = ckpt.extra.get("history", [])
        self.start_round = ckpt.round + 1
        noise_state = ckpt.extra.get("noise_rng_state")
        if noise_state is not None and not self.noise.secure:
            try:
                self.noise.rng.bit_generator.state = noise_state
            except (TypeError, ValueError) as exc:
                raise FederationError(
                    f"the checkpoint's noise-generator state does not fit this run ({exc}); "
                    "it was written by another version or --noise-seed"
                ) from None
        if self.user_privacy is not None:
            # Every round ever released counts, including any released after the last
            # checkpoint and released again now: ε is over-counted, never under-counted.
            # A missing, unreadable or truncated ledger raises LedgerResumeError.
            self.user_privacy.restore(self.ledger_path, ckpt.round)

    def checkpoint(self, round_: int) -> None:
        if self.probe is not None:
            self.probe.save(self.run_dir)
        save_checkpoint(
            self.run_dir,
            Checkpoint(
                round=round_,
                params=self.params,
                optimizer=self.optimizer.state_dict(),
                average=self.average.state_dict() if self.average is not None else {},
                # A secure generator's state is never written to disk (None): it would let
                # whoever reads the checkpoint recompute later cohorts or subtract the noise.
                rng_state=checkpoint_state(self.sampler),
                extra={
                    "engine": self.engine,
                    "history": self.history,
                    "noise_rng_state": checkpoint_state(self.noise),
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
            node = reply.metadata.src_node_id
            if not reply.has_error():
                log.write(message_entry(round_, "up", node, kind, reply.content))
                continue
            # A device that failed (crashed, dropped out, timed out) is named with Flower's
            # reason, so that an operator sees why a round was short.
            error = reply.error
            reason = f"code {error.code}: {error.reason}"[:500]
            log.write(verdict_entry(round_, node, kind, "failed", reason))
            logger.warning("round %d: the %s request to node %d failed (%s)", round_, kind,
                           node, reason)  # fmt: skip
        return replies

    def round_sum(self) -> UpdateSum:
        """An empty running sum for one round: clipped under user-level DP, plain otherwise."""
        if self.user_privacy is None:
            return UpdateSum(self.spec)
        return ClippedSum(self.spec, self.user_privacy.clip)

    def _check(
        self,
        reply: Message,
        round_: int,
        kind: str,
        log: JsonlWriter,
        rejected: dict[str, int],
        refused: dict[str, int],
    ) -> Reply | None:
        """The usable content of ``reply``, or None for a refusal or a malformed reply.

        A malformed reply is counted in ``rejected`` by reason, a refusal in ``refused``
        by its code's name, and both are logged (``messages.jsonl`` and the Python log);
        neither stops the run.
        """
        node = reply.metadata.src_node_id
        try:
            got = check_incoming(
                reply.content,
                kind=kind,
                spec=self.spec if kind == "train" else {},
                dp=self.cfg.dp,
                task=self.cfg.task,
                genres=self.catalog.item_genres is not None,
            )
        except AllowListError as exc:
            _count(rejected, exc.reason)
            log.write(verdict_entry(round_, node, kind, "rejected", exc.reason, str(exc)))
            logger.warning(
                "round %d: rejected the %s reply of node %d: %s", round_, kind, node, exc
            )
            return None
        if got.refused is not None:
            _count(refused, got.refused)
            log.write(verdict_entry(round_, node, kind, "refused", got.refused))
            logger.info("round %d: node %d refused the %s request (%s)", round_, node, kind,
                     got.refused)  # fmt: skip
            return None
        return got

    def train_round(self, round_: int, nodes: Sequence[int], log: JsonlWriter) -> RoundResult:
        result = RoundResult()
        total = self.round_sum()
        for reply in self._exchange(round_, nodes, "train", {}, log):
            if reply.has_error():
                result.failed += 1
                continue
            got = self._check(reply, round_, "train", log, result.rejected_reasons, result.refused)
            if got is None:
                continue
            unused = result.use(got, total, self.cfg.aggregation)
            if unused == "no-examples":
                log.write(no_examples_entry(round_, reply.metadata.src_node_id))
            if unused is not None:
                continue
            if self.probe is not None:
                key = self.device_keys.get(reply.metadata.src_node_id)
                if key is not None and got.update is not None:
                    self.probe.record(round_, key, got.update)
        result.rejected = sum(result.rejected_reasons.values())
        self.aggregate(round_, result, total)
        return result

    def aggregate(self, round_: int, result: RoundResult, total: UpdateSum | None = None) -> None:
        """Apply the round's sum of updates: a plain equal-weight mean, or the user-level DP one.

        Under user-level DP every round releases noise, even one that no device joined,
        and the ledger event is appended before the new parameters are used anywhere: if
        the write fails, the parameters, the optimizer and the average stay as they were
        and a :class:`FederationError` stops the run.
        """
        total = self.round_sum() if total is None else total
        result.update_norms = list(total.norms)
        if self.canaries is not None:
            result.canaries = self.canaries.add_to(total, self.cfg.sample_rate, self.rng)
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
            try:
                LedgerWriter(self.ledger_path).append(event)
            except OSError as exc:
                raise FederationError(
                    f"round {round_}: could not append the user-level ledger event to "
                    f"{self.ledger_path} ({exc}); the round's model was not used. Make the "
                    "ledger writable (disk space, permissions) and resume from the last "
                    "checkpoint"
                ) from exc
            result.user_epsilon = event.epsilon
            self.params = self.optimizer.step(self.params, delta)
        if self.average is not None:
            self.average.update(self.params)  # every round, empty ones too

    def evaluate(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> dict[str, float]:
        return finalize(self.cfg.task, add_sums(self.evaluation_sums(round_, nodes, part, log)))

    def evaluation_round(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> EvaluationRound:
        """Ask ``nodes`` to evaluate the released model on ``part``; sort their replies."""
        out = EvaluationRound()
        for reply in self._exchange(round_, nodes, "evaluate", {"part": part}, log):
            if reply.has_error():
                out.failed += 1
                continue
            got = self._check(reply, round_, "evaluate", log, out.rejected_reasons, out.refused)
            if got is None:
                continue
            out.noised.append(got.noised)
            out.parts.append({k: float(v) for k, v in got.metrics.items() if k != "local-epsilon"})
        return out

    def evaluation_sums(
        self, round_: int, nodes: Sequence[int], part: str, log: JsonlWriter
    ) -> list[dict[str, float]]:
        """The metric sums of every device that replied within the allow-list."""
        return self.evaluation_round(round_, nodes, part, log).parts

    def enroll(self, nodes: Sequence[int], log: JsonlWriter) -> list[int]:
        """Ask every node for its device key; return the nodes ordered by key.

        Flower's node ids change from one start to the next; the keys do not, so a
        seeded Poisson sample over this order picks the same devices after a resume.
        """
        keys: dict[int, int] = {}
        rejected: dict[str, int] = {}
        refused: dict[str, int] = {}
        for reply in self._exchange(0, nodes, "enroll", {}, log):
            if reply.has_error():
                continue
            got = self._check(reply, 0, "enroll", log, rejected, refused)
            if got is not None:
                keys[reply.metadata.src_node_id] = int(got.metrics["device-key"])
        if len(set(keys.values())) != len(keys):
            raise FederationError("two devices enrolled with the same device key")
        if len(keys) < len(nodes):
            raise FederationError(
                f"{len(nodes) - len(keys)} of {len(nodes)} devices did not enroll "
                f"(malformed replies by reason: {rejected}; refusals: {refused}); "
                "check the SuperNodes' logs and messages.jsonl"
            )
        self.device_keys = keys
        if self.holdout is not None:
            if any(not 0 <= k < self.n_devices for k in keys.values()):
                raise FederationError(
                    "--audit-holdout needs simulated devices (device keys 0..N-1); a "
                    "deployment's devices cannot be held out by the server"
                )
            keys = {n: k for n, k in keys.items() if k not in self.holdout.users}
        return sorted(keys, key=keys.__getitem__)

    # -- the loop ------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        if cfg.aggregation == "examples" and cfg.local_dp:
            raise FederationError(
                "--aggregation examples weights updates by their example counts, which devices "
                "do not send under --dp local/both (a count is computed on raw rows); use "
                "--aggregation equal"
            )
        # A fresh run starts its logs afresh; a resumed one keeps the checkpointed rounds.
        keep = self.start_round - 1 if self.start_round > 1 else None
        metrics_log = JsonlWriter(self.run_dir / "metrics.jsonl", keep_through_round=keep)
        if keep is None and self.ledger_path.exists():
            # A new run in an old directory: keep the old ledger beside, untouched.
            self.ledger_path.rename(self.run_dir / f"ledger.before-{time.time_ns()}.jsonl")
        if keep is None:
            # Every run has a ledger; a run without DP leaves it empty: nothing it released
            # is accounted (the audit calls it not-private).
            self.ledger_path.touch()
        if keep is None and self.canaries is not None:
            self.canaries.save(self.run_dir, self.params)
        if keep is None and cfg.audit_canaries:
            save_initial(self.run_dir, self.params)
        if keep is None and self.holdout is not None:
            self.holdout.save(self.run_dir)
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
                ev = self.evaluation_round(0, eval_nodes, "valid", msg_log)
                entry0 = {
                    "round": 0,
                    "sampled": 0,
                    "eval_devices": len(eval_nodes),
                    "eval": finalize(cfg.task, add_sums(ev.parts)),
                    **ev.log_entry(),
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
                    "rejected_reasons": result.rejected_reasons,
                    "refused": result.refused,
                    "failed": result.failed,
                    "train_loss": float(np.mean(result.losses)) if result.losses else None,
                    "examples": result.examples,
                    "train_wall_s": t_train,
                    "device_train_s": result.device_seconds,
                }
                if self.canaries is not None:
                    entry["canaries"] = result.canaries
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
                    ev = self.evaluation_round(round_, eval_nodes, "valid", msg_log)
                    entry["eval"] = finalize(cfg.task, add_sums(ev.parts))
                    entry.update(ev.log_entry())
                entry["wall_s"] = time.perf_counter() - t0
                metrics_log.write(entry)
                self.history.append(entry)
                self.checkpoint(round_)
                shown = entry.get("eval") or {}
                status = ", ".join(f"{k}={v:.4f}" for k, v in list(shown.items())[:2])
                progress.update(bar, advance=1, status=f"sampled {len(sampled)} {status}")
        t0 = time.perf_counter()
        final_eval = self.evaluation_round(cfg.rounds + 1, nodes, "test", msg_log)
        final_parts = final_eval.parts
        final = finalize(cfg.task, add_sums(final_parts))
        final_s = time.perf_counter() - t0
        metrics_log.close()
        msg_log.close()
        np.savez(self.run_dir / "global_params.npz", **self.released())  # type: ignore[arg-type]
        if self.probe is not None:
            self.probe.save(self.run_dir)
        outcome: dict[str, Any] = {
            "final": final,
            "final_se": standard_errors(cfg.task, final_parts),
            "final_eval_s": final_s,
            "final_eval_rejected": final_eval.rejected_reasons,
            "final_eval_refused": final_eval.refused,
            "enroll_s": t_enroll,
            "devices": len(nodes),
            "rounds_completed": len([h for h in self.history if h["round"] >= 1]),
            "stopped_reason": self.stopped_reason,
            "privacy": self.privacy_report(len(nodes)),
        }
        write_release(self.run_dir, cfg, self.released(), outcome["privacy"], final_eval)
        return outcome

    def privacy_report(self, n_devices: int) -> dict[str, Any]:
        """What metrics.json says about privacy: ε per layer from the ledger, and how."""
        cfg = self.cfg
        report: dict[str, Any] = {"dp": cfg.dp}
        report["evaluation"] = EVALUATION_COVERAGE["local" if cfg.local_dp else cfg.dp]
        if cfg.dp == "none":
            report["statement"] = "no differential privacy: updates are sent and used as is"
            return report
        report.update(privacy_summary(self.ledger_path, n_devices))
        report["guarantees"] = guarantees(cfg.dp)
        report["sampling"] = self.sampler_description
        # A seeded simulation is reproducible and private against nobody who has the seed.
        report["randomness"] = (
            "seeded (simulation only)" if cfg.noise_seed is not None else "secure"
        )
        if self.user_privacy is not None:
            report.setdefault("user", {}).update(self.user_privacy.describe())
            report["user"]["noise_source"] = self.noise.description
        if cfg.local_dp:
            local = report.setdefault("local", {"epsilon_max": 0.0, "epsilon_median": 0.0})
            local.update(
                {
                    # What the run asked for; each device trains with its own policy, and
                    # the ledger (above) records what it did.
                    "requested": {
                        "clip": cfg.local_clip,
                        "noise_multiplier": cfg.local_noise,
                        "target_epsilon": cfg.local_epsilon,
                        "budget": cfg.local_epsilon_budget,
                    },
                    "noise_source": "device: "
                    + (
                        "SEEDED (simulation only; the seed stays in the operator's config)"
                        if cfg.noise_seed is not None
                        else SECURE_DESCRIPTION
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


def public_config(cfg: FederationConfig) -> dict[str, Any]:
    """The run config without what stays with the operator (:data:`PRIVATE_CONFIG_KEYS`);
    the operator's own data file is named by its file name only, not its local path."""
    out = {k: v for k, v in cfg.to_flat().items() if k not in PRIVATE_CONFIG_KEYS}
    dataset = str(out.get("dataset", ""))
    if "/" in dataset or "\\" in dataset:
        out["dataset"] = Path(dataset).name
    return out


def release_metrics(cfg: FederationConfig, final_eval: EvaluationRound) -> dict[str, Any]:
    """The utility figures that may be released, given what protects them.

    ``--dp none``: the final metrics, marked as unprotected. ``--dp user``: none (the
    devices' evaluation sums are un-noised and outside ε). ``--dp local``/``both``: the
    final metrics of the noised evaluation releases only (each in its device's ε).
    """
    if cfg.dp == "none":
        parts = final_eval.parts
        note = (
            "no differential privacy protects these figures: they come from the devices' "
            "un-noised evaluation sums"
        )
    elif cfg.dp == "user":
        return {"dp": cfg.dp, "utility": EVALUATION_COVERAGE["user"]}
    else:
        parts = [p for p, noised in zip(final_eval.parts, final_eval.noised, strict=True) if noised]
        note = (
            "computed from noised evaluation releases only, each composed into its device's "
            "local ε: estimates, with the devices' noise in them"
        )
    return {
        "dp": cfg.dp,
        "final": finalize(cfg.task, add_sums(parts)),
        "final_se": standard_errors(cfg.task, parts),
        "note": note,
    }


#: Keys of the privacy block that describe the devices' participation rather than the
#: mechanism; they stay in the operator's metrics.json.
OPERATOR_PRIVACY_KEYS = frozenset({"devices_trained"})


def _releasable(block: Any) -> Any:
    if isinstance(block, dict):
        return {k: _releasable(v) for k, v in block.items() if k not in OPERATOR_PRIVACY_KEYS}
    if isinstance(block, str):
        # A simulation's noise seed stays with the operator; the release says it was seeded.
        return re.sub(r"SEEDED with -?\d+", "SEEDED", block)
    return block


def write_release(
    run_dir: Path,
    cfg: FederationConfig,
    params: Arrays,
    privacy: dict[str, Any],
    final_eval: EvaluationRound,
) -> Path:
    """Write ``RUN/release/``: what may be published of the run, and nothing else.

    ``model.npz`` (the released global parameters), ``config.json`` (the public config),
    ``privacy.json`` (the privacy block, from the ledger) and ``metrics.json`` (utility
    figures only where they are covered, :func:`release_metrics`). Participant ids,
    counts, update norms, clipped fractions, losses and per-round evaluations stay in the
    operator files beside it.
    """
    out = run_dir / RELEASE_DIR
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / "model.npz", **params)  # type: ignore[arg-type]
    files = {
        "config.json": public_config(cfg),
        "privacy.json": _releasable(privacy),
        "metrics.json": release_metrics(cfg, final_eval),
    }
    for name, obj in files.items():
        (out / name).write_text(json.dumps(obj, indent=2, sort_keys=True))
    return out
