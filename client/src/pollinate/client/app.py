"""The Flower ClientApp of a Pollinate device (Message API).

The same object runs in simulations (one virtual device per user, selected by
``node_config["partition-id"]``) and in deployments. On each ``train`` message the
device restores its private parameters, loads the global ones, trains, saves its private
parameters, and replies with the update to the global parameters and a few metrics, all
checked against the allow-list before they leave.

Privacy settings come from the device's own policy (:mod:`pollinate.client.policy`, read
from the node config), never from the server's message: a request that would weaken the
policy gets a refusal code and nothing else, and the reason is logged on the device.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pollinate.client.adaptation import LocalAdaptation, adapt_locally
from pollinate.client.device_data import (
    DeviceData,
    DeviceIndex,
    with_interaction_canaries,
    with_validation_in_training,
)
from pollinate.client.dp_training import (
    LocalDPConfig,
    default_local_delta,
    device_epsilon,
    train_device_dp,
)
from pollinate.client.evaluation import evaluate_device
from pollinate.client.join import STORE_NODE_KEY, store_key
from pollinate.client.local_state import (
    ContextStateStore,
    DiskStateStore,
    LocalStateStore,
    StateStoreError,
)
from pollinate.client.policy import DevicePolicy, policy_from_node_config, weakening
from pollinate.client.private_evaluation import noised_sums
from pollinate.client.training import (
    LocalTrainConfig,
    check_finite,
    layout,
    seeded_cpu_rng,
    train_device,
)
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.interaction_canaries import NODE_CONFIG_KEY as CANARY_NODE_KEY
from pollinate.shared.privacy.interaction_canaries import InteractionCanaries
from pollinate.shared.privacy.ledger import LedgerEvent, LedgerWriter, local_event
from pollinate.shared.privacy.randomness import (
    STREAM_DEVICE,
    secret_torch_generator,
    secure_generator,
    seeded_generator,
)
from pollinate.shared.tasks import load_task
from pollinate.shared.threads import use_one_thread
from pollinate.shared.wire import (
    CATALOGUE_RECORD,
    CONFIG_RECORD,
    GLOBAL_RECORD,
    METRICS_RECORD,
    REFUSAL_CODES,
    REFUSAL_KEY,
    UPDATE_RECORD,
    ParamSpec,
    arrays_to_record,
    check_outgoing,
    check_reply,
    integer,
    record_to_arrays,
    spec_of,
)

app = ClientApp()
LOG = logging.getLogger("pollinate.device")


@lru_cache(maxsize=4)
def _device_index(
    dataset: str,
    data_dir: str | None,
    task: str,
    fold: int,
    seed: int,
    synthetic_users: int,
    synthetic_items: int,
    columns: str | None = None,
) -> DeviceIndex:
    """The partition of a dataset into devices, loaded once per process."""
    task_data = load_task(
        dataset,
        task=task,  # type: ignore[arg-type]
        data_dir=data_dir,
        fold=fold,
        seed=seed,
        synthetic_users=synthetic_users,
        synthetic_items=synthetic_items,
        columns=columns,
    )
    return DeviceIndex(task_data)


def simulated_device(config: Mapping[str, Any], context: Context) -> DeviceData:
    """The data of the simulated device that this node plays (with its validation rows
    among its training rows under ``train-on-validation``)."""
    index = _device_index(
        str(config["dataset"]),
        config.get("data-dir"),
        str(config["task"]),
        int(config.get("fold", 0)),
        int(config["seed"]),
        int(config.get("synthetic-users", 1000)),
        int(config.get("synthetic-items", 500)),
        config.get("columns"),
    )
    partition = int(context.node_config["partition-id"])
    device = index.device(partition)
    canary_file = context.node_config.get(CANARY_NODE_KEY)
    if canary_file:
        # The experimenter's audit canaries, given by the engine (never by the server).
        device = with_interaction_canaries(device, _canaries(str(canary_file)), partition)
    return with_validation_in_training(device) if config.get("train-on-validation") else device


@lru_cache(maxsize=2)
def _canaries(path: str) -> InteractionCanaries:
    return InteractionCanaries.load(Path(path))


def device_generator(
    config: Mapping[str, Any], round_: int, partition: int, salt: int
) -> torch.Generator:
    """Per (run seed, round, device) generator: reproducible, independent across devices."""
    seq = np.random.SeedSequence([int(config["seed"]), round_, partition, salt])
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))


def _state_store(policy: DevicePolicy, context: Context) -> LocalStateStore:
    """The store the policy names (its own directory), else the node's memory."""
    if policy.state_dir:
        # A simulated device's "disk" needs atomicity, not durability against power loss.
        return DiskStateStore(
            Path(policy.state_dir),
            f"device-{device_key(context)}",
            durable=not policy.simulated,
        )
    return ContextStateStore(context)


def _build(config: Mapping[str, Any], device: DeviceData) -> RecModel:
    data = device.data
    midpoint = 0.0 if data.rating_scale is None else sum(data.rating_scale) / 2
    kwargs: dict[str, Any] = {
        "n_users": 1,
        "n_items": data.n_items,
        "dim": int(config["embedding-dim"]),
        "item_genres": data.item_genres,
        "global_mean": midpoint,
    }
    if config["model"] == "mf":
        kwargs["learn_global_mean"] = bool(config.get("learn-global-mean", True))
    if config["model"] == "interest":
        kwargs["history_len"] = int(config["history-len"])
        if config.get("dropout") is not None:
            kwargs["dropout"] = float(config["dropout"])
    return build_model(str(config["model"]), **kwargs)


def fresh_model(config: Mapping[str, Any], device: DeviceData, partition: int) -> RecModel:
    """The model of simulated device ``partition`` before anything is loaded into it: its
    private parameters are those of a device that never trained, the same in every round
    (seeded by the run seed and the partition)."""
    init = device_generator(config, 0, partition, salt=2)
    with seeded_cpu_rng(int(torch.randint(0, 2**62, (1,), generator=init))):
        return _build(config, device)


def device_policy(context: Context) -> DevicePolicy:
    """The device's own privacy policy (node config), never the server's message."""
    return policy_from_node_config(context.node_config)


def _seeded(policy: DevicePolicy) -> bool:
    """Whether this device's noise and sampling are seeded (a simulation flag)."""
    return policy.simulated and policy.noise_seed is not None


def _secret(policy: DevicePolicy, config: Mapping[str, Any]) -> bool:
    """Whether the device's randomness must be secret: under any DP, unless seeded."""
    private = policy.local_dp or config.get("dp") in ("local", "user", "both")
    return private and not _seeded(policy)


def noise_generator(policy: DevicePolicy, round_: int, key: int, salt: int) -> np.random.Generator:
    """The generator of a release's noise and Poisson sampling: a CSPRNG, or (simulated
    device with a noise seed) a seeded one."""
    if _seeded(policy):
        assert policy.noise_seed is not None
        return seeded_generator(policy.noise_seed, STREAM_DEVICE, round_, key, salt)
    return secure_generator()


def _mode(config: Mapping[str, Any]) -> str:
    """The run's DP mode as the request states it (for the exact allow-list of a reply)."""
    return str(config.get("dp") or "none")


def _refusal(kind: str, reason: str, detail: str) -> RecordDict:
    """A refusal code and nothing else; say why on the device only."""
    return _refused(kind, reason, detail).content()


def _model_key(config: Mapping[str, Any], device: DeviceData) -> tuple[Any, ...]:
    """What the shape and constants of a device's model depend on (see :func:`_build`)."""
    data = device.data
    keys = ("dataset", "columns", "data-dir", "synthetic-users", "synthetic-items", "task",
            "fold", "seed", "model", "embedding-dim", "learn-global-mean", "history-len",
            "dropout")  # fmt: skip
    return (*(config.get(k) for k in keys), data.n_items, data.rating_scale)


_MODELS: dict[tuple[Any, ...], RecModel] = {}


def _reused_model(config: Mapping[str, Any], device: DeviceData) -> RecModel:
    """One model object per process and configuration, reused by every device it plays.

    Every parameter is global or private and a device overwrites all of them before use
    (:func:`device_model`), so a reused model computes exactly what a freshly built one
    does, without building a model (and its item table) for every message.
    """
    key = _model_key(config, device)
    model = _MODELS.get(key)
    if model is None:
        _MODELS.clear()  # one configuration at a time: a new run drops the last one's
        model = _MODELS[key] = _build(config, device)
    return model


def warm_up(config: Mapping[str, Any], context: Context) -> None:
    """Load what every message of a simulated device's process needs (the dataset's
    partition into devices, the shared model and its layout) ahead of the first one."""
    layout(_reused_model(config, simulated_device(config, context)))


def fresh_private_state(
    config: Mapping[str, Any], device: DeviceData, partition: int
) -> dict[str, np.ndarray]:
    """The private parameters of simulated device ``partition`` before it ever trained."""
    draw = getattr(_reused_model(config, device), "draw_private_state", None)
    if draw is None:
        return _local_state(fresh_model(config, device, partition))
    # What fresh_model's private parameters are, without building its item table.
    init = device_generator(config, 0, partition, salt=2)
    with seeded_cpu_rng(int(torch.randint(0, 2**62, (1,), generator=init))):
        return dict(draw())


def device_model(
    config: Mapping[str, Any],
    device: DeviceData,
    partition: int,
    global_state: Mapping[str, np.ndarray],
    private: Mapping[str, np.ndarray] | None,
) -> RecModel:
    """The device's model for one message: the received global parameters and its private
    ones (``None``: those of a device that never trained, :func:`fresh_private_state`)."""
    model = _reused_model(config, device)
    lay = layout(model)
    lay.load_global(global_state)
    if private is None or set(lay.local) - set(private):
        private = {**fresh_private_state(config, device, partition), **(private or {})}
    params = lay.params
    with torch.no_grad():
        for k, v in private.items():
            params[k].copy_(torch.as_tensor(v))
    return model


def round_generator(
    policy: DevicePolicy, config: Mapping[str, Any], partition: int, *, evaluating: bool
) -> torch.Generator:
    """The torch generator of one round's negatives and dropout masks (see _secret)."""
    round_ = integer(config["round"], "round")
    if _secret(policy, config):
        # Negatives and dropout masks: secret, not a public stream indexed by round.
        return secret_torch_generator(secure_generator())
    if _seeded(policy):
        return device_generator({"seed": policy.noise_seed}, round_, partition, int(evaluating))
    return device_generator(config, round_, partition, salt=int(evaluating))


def _prepare(
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    context: Context,
    policy: DevicePolicy,
    store: LocalStateStore | None,
    *,
    evaluating: bool,
) -> tuple[DeviceData, RecModel, LocalStateStore, torch.Generator]:
    if policy.simulated or "partition-id" in context.node_config:
        # A simulated device gets one core; thread pools would oversubscribe it.
        use_one_thread()
    device = simulated_device(config, context)
    partition = int(context.node_config["partition-id"])
    round_ = integer(config["round"], "round")
    gen = round_generator(policy, config, partition, evaluating=evaluating)
    store = _state_store(policy, context) if store is None else store
    # Training in round r starts from the state of an earlier round; evaluating after
    # round r uses the state that round r produced.
    private = store.load(before_round=round_ + 1 if evaluating else round_)
    model = device_model(config, device, partition, global_state, private)
    return device, model, store, gen


def _local_state(model: RecModel) -> dict[str, np.ndarray]:
    return layout(model).local_state()


def train_config(config: Mapping[str, Any]) -> LocalTrainConfig:
    """The device's training settings from the round's config (dashed keys)."""
    return LocalTrainConfig(
        loss=str(config["loss"]),
        reg=float(config["weight-decay"]),
        negatives=int(config["negatives"]),
        epochs=int(config["local-epochs"]),
        max_steps=_optional_int(config, "max-local-steps"),
        batch_size=int(config["batch-size"]),
        lr_global=float(config["lr-global"]),
        lr_local=float(config["lr-local"]),
        history_len=int(config["history-len"]),
        private_refit=private_refit(config),
        lr_encoder=_optional_float(config, "lr-encoder"),
        encoder_max_grad_norm=_optional_float(config, "encoder-max-grad-norm"),
        optimizer=str(config.get("device-optimizer", "sgd")),
        private_weight_decay=float(config.get("private-weight-decay", 0.0)),
    )


def private_refit(config: Mapping[str, Any]) -> float | None:
    """The L2 weight of the closed-form private refit, or ``None`` when it is off."""
    return float(config["refit-reg"]) if config.get("private-refit") else None


def local_adaptation(config: Mapping[str, Any]) -> LocalAdaptation | None:
    """The local adaptation before evaluating, or ``None`` when ``adapt-epochs`` is 0."""
    epochs = int(config.get("adapt-epochs") or 0)
    if epochs == 0:
        return None
    return LocalAdaptation(epochs=epochs, lr_scale=float(config["adapt-lr-scale"]))


def _optional_int(config: Mapping[str, Any], key: str) -> int | None:
    value = config.get(key)
    return None if value is None else int(value)


def _optional_float(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    return None if value is None else float(value)


def local_dp_config(policy: DevicePolicy, config: Mapping[str, Any]) -> LocalDPConfig:
    """The device's DP-SGD settings: every privacy value from its policy. Only the
    gradient-sampling mode (same mechanism, different memory use) comes from the round."""
    return LocalDPConfig(
        clip_norm=policy.clip,
        noise_multiplier=policy.noise_multiplier,
        target_epsilon=policy.target_epsilon,
        planned_rounds=policy.planned_rounds,
        delta=policy.delta,
        epsilon_budget=policy.epsilon_budget,
        grad_sample_mode=str(config.get("local-grad-sample-mode", "hooks")),  # type: ignore[arg-type]
    )


def _device_delta(policy: DevicePolicy, device: DeviceData) -> float:
    return (
        policy.delta if policy.delta is not None else default_local_delta(len(device.split.train))
    )


def _charge(policy: DevicePolicy, store: LocalStateStore, event: LedgerEvent) -> None:
    """Write-ahead: the device's own ledger first (its accountant), then, for a simulated
    device, the run's copy. Both happen before the release leaves."""
    store.charge(event)
    if policy.simulated and policy.run_ledger:
        LedgerWriter(Path(policy.run_ledger)).append(event)


def _train_private(
    policy: DevicePolicy,
    config: dict[str, Any],
    context: Context,
    device: DeviceData,
    model: RecModel,
    store: LocalStateStore,
    gen: torch.Generator,
) -> tuple[dict[str, np.ndarray] | None, dict[str, int | float]]:
    """A DP-SGD round. The ledger event (the accountant) and the private parameters are
    written *before* this returns, that is before the update can leave."""
    round_ = int(config["round"])
    dp = local_dp_config(policy, config)
    history = store.load_history()
    key = device_key(context)
    delta = _device_delta(policy, device)

    def before_release(new_history: list[tuple[float, float, int]]) -> None:
        _charge(
            policy,
            store,
            local_event(
                round_=round_,
                device=str(key),
                release=new_history[-1],
                clip_norm=dp.clip_norm,
                delta=delta,
                accountant="pld",
                epsilon=device_epsilon(new_history, delta),
            ),
        )
        private = _local_state(model)
        # A diverged round is still charged (whether it diverged depends on the data);
        # its private state is not kept, and check_finite below stops the update.
        if all(np.isfinite(v).all() for v in private.values()):
            store.save(round_, private)

    outcome = train_device_dp(
        model, device, train_config(config), dp, history, gen,
        noise_rng=noise_generator(policy, round_, key, salt=3),
        before_release=before_release,
    )  # fmt: skip
    if outcome.update is not None:
        check_finite(model, outcome.update)
    # No example count and no timing: only the update and what it cost.
    metrics: dict[str, int | float] = {"local-epsilon": outcome.epsilon}
    if outcome.update is None:
        metrics["dp-stopped"] = 1
    return outcome.update, metrics


@app.train()
def train(message: Message, context: Context) -> Message:
    config = dict(message.content.config_records[CONFIG_RECORD])
    global_state = record_to_arrays(message.content.array_records[GLOBAL_RECORD])
    if STORE_NODE_KEY in context.node_config:
        content = store_reply("train", config, global_state, message, context)
    else:
        content = train_reply(device_policy(context), config, global_state, context)
    return Message(content=content, reply_to=message)


@dataclass(frozen=True)
class DeviceReply:
    """What a device step sends, before it is packed into a message: the update's arrays
    (``None``: none) and the metrics, or a refusal (``metrics = {"refused": CODE}``),
    with what its allow-list check needs (the mode and catalogue facts of
    :func:`~pollinate.shared.wire.check_outgoing`).

    The ClientApp packs it (:meth:`content`) and checks the message; the fast engine
    checks these very arrays with the same check (:meth:`check`) and never serialises them.
    """

    kind: str
    metrics: dict[str, int | float]
    update: dict[str, np.ndarray] | None = None
    dp: str = "none"
    task: str | None = None
    genres: bool = False

    @property
    def refused(self) -> bool:
        return self.update is None and set(self.metrics) == {REFUSAL_KEY}

    def content(self) -> RecordDict:
        """The message content: exactly the arrays and metrics above."""
        records: dict[str, Any] = {}
        if self.update is not None:
            records[UPDATE_RECORD] = arrays_to_record(self.update)
        records[METRICS_RECORD] = MetricRecord(self.metrics)  # type: ignore[arg-type]
        return RecordDict(records)

    def check(self, spec: ParamSpec) -> None:
        """The device's allow-list check of what it sends (before anything leaves)."""
        if not self.refused:
            check_reply(self.kind, self.update, self.metrics, spec=spec, incoming=False,
                        dp=self.dp, task=self.task, genres=self.genres)  # fmt: skip


def _refused(kind: str, reason: str, detail: str) -> DeviceReply:
    """A refusal code and nothing else; say why on the device only."""
    LOG.warning("refused a %s request: %s", kind, detail)
    return DeviceReply(kind, {REFUSAL_KEY: REFUSAL_CODES[reason]})


def _checked_content(reply: DeviceReply, spec: ParamSpec) -> RecordDict:
    """The message of ``reply``, checked against the allow-list on its decoded content."""
    content = reply.content()
    if not reply.refused:
        check_outgoing(content, kind=reply.kind, spec=spec, dp=reply.dp, task=reply.task,
                       genres=reply.genres)  # fmt: skip
    return content


def train_reply(
    policy: DevicePolicy,
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    context: Context,
    store: LocalStateStore | None = None,
) -> RecordDict:
    """The whole device step of a training request: the reply's content, checked against
    the allow-list (or a refusal). The ClientApp's ``train`` handler calls it; ``store``
    (default: the one the policy names) is where the device keeps its private state and
    accountant."""
    reply = train_step(policy, config, global_state, context, store)
    return _checked_content(reply, spec_of(global_state))


def train_step(
    policy: DevicePolicy,
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    context: Context,
    store: LocalStateStore | None = None,
) -> DeviceReply:
    """The device step of a training request, up to what it would send (see
    :class:`DeviceReply`); :func:`train_reply` and the fast engine's shards
    (``pollinate.simulations.fast``) both call it."""
    reason = weakening(policy, config, "train")
    if reason is not None:
        return _refused("train", "policy", reason)
    if policy.local_dp and not policy.state_dir:
        return _refused("train", "state", "local DP needs a durable, device-owned state store")
    device, model, store, gen = _prepare(
        config, global_state, context, policy, store, evaluating=False
    )
    if policy.local_dp:
        try:
            update, released = _train_private(policy, config, context, device, model, store, gen)
        except StateStoreError as exc:
            return _refused("train", "state", str(exc))
        return DeviceReply("train", released, update, dp="local")
    outcome = train_device(model, device, train_config(config), gen)
    store.save(int(config["round"]), _local_state(model))
    metrics: dict[str, int | float] = {
        "num-examples": outcome.n_examples,
        "train-loss": outcome.loss,
        "train-seconds": outcome.seconds,
    }
    return DeviceReply("train", metrics, outcome.update, dp=_mode(config))


def device_key(context: Context) -> int:
    """A stable pseudonymous key: the partition-id of a simulated device, else a random
    63-bit key kept in the node's state."""
    if "partition-id" in context.node_config:
        return int(context.node_config["partition-id"])
    if STORE_NODE_KEY in context.node_config:
        return device_store(context.node_config).device_key()
    policy = device_policy(context)
    if policy.state_dir:
        return _stored_key(Path(policy.state_dir))
    record = context.state.config_records.get("pollinate.device-key")
    if record is None:
        record = ConfigRecord({"key": secrets.randbits(63)})
        context.state["pollinate.device-key"] = record
    return integer(record["key"], "device-key")


def _stored_key(root: Path) -> int:
    """A real device's key, kept in its own state directory so that a restart keeps it."""
    path = root / "device-key"
    if not path.exists():
        from pollinate.shared.fileio import atomic_write_bytes

        atomic_write_bytes(path, str(secrets.randbits(63)).encode())
    try:
        return int(path.read_text().strip())
    except ValueError as exc:
        raise StateStoreError(f"{path} is not a device key ({exc}); restore it") from exc


@app.query("enroll")
def enroll(message: Message, context: Context) -> Message:
    content = RecordDict({METRICS_RECORD: MetricRecord({"device-key": device_key(context)})})
    check_outgoing(content, kind="enroll", spec={})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    config = dict(message.content.config_records[CONFIG_RECORD])
    global_state = record_to_arrays(message.content.array_records[GLOBAL_RECORD])
    if STORE_NODE_KEY in context.node_config:
        content = store_reply("evaluate", config, global_state, message, context)
    else:
        content = evaluate_reply(device_policy(context), config, global_state, context)
    return Message(content=content, reply_to=message)


def evaluate_reply(
    policy: DevicePolicy,
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    context: Context,
    store: LocalStateStore | None = None,
) -> RecordDict:
    """The whole device step of an evaluation request (see :func:`train_reply`)."""
    return _checked_content(evaluate_step(policy, config, global_state, context, store), {})


def evaluate_step(
    policy: DevicePolicy,
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    context: Context,
    store: LocalStateStore | None = None,
) -> DeviceReply:
    """The device step of an evaluation request, up to what it would send (see
    :func:`train_step`)."""
    reason = weakening(policy, config, "evaluate")
    if reason is not None:
        return _refused("evaluate", "policy", reason)
    if policy.evaluation == "refuse":
        return _refused("evaluate", "evaluation", "this device's policy answers no evaluation")
    if policy.local_dp and not policy.state_dir:
        return _refused("evaluate", "state", "a noised evaluation needs a durable accountant")
    device, model, store, gen = _prepare(
        config, global_state, context, policy, store, evaluating=True
    )
    adapt = local_adaptation(config)
    if adapt is not None:
        # The adapted copy is scored and dropped: evaluating saves no state.
        adapt_locally(model, device, train_config(config), adapt, gen)
    sums = evaluate_device(model, device, str(config["part"]), private_refit=private_refit(config))
    if policy.evaluation == "noised":
        try:
            released = _noised_evaluation(policy, config, context, device, store, sums)
        except StateStoreError as exc:
            return _refused("evaluate", "state", str(exc))
        except ConfigError as exc:
            return _refused("evaluate", "evaluation", str(exc))
        if released is None:
            return _refused("evaluate", "budget", "the noised evaluation would exceed the budget")
        sums = released
    return DeviceReply(
        "evaluate",
        dict(sums),
        dp="local" if policy.local_dp else _mode(config),
        task=device.task,
        genres=device.data.item_genres is not None,
    )


def _noised_evaluation(
    policy: DevicePolicy,
    config: Mapping[str, Any],
    context: Context,
    device: DeviceData,
    store: LocalStateStore,
    sums: Mapping[str, float],
) -> dict[str, float] | None:
    """The evaluation sums as a Gaussian release charged to the device's accountant
    (:mod:`pollinate.client.private_evaluation`), or ``None`` when the budget forbids it."""
    round_ = int(config["round"])
    key = device_key(context)
    rng = noise_generator(policy, round_, key, salt=4)
    released, unit = noised_sums(
        sums, device.task, device.data.rating_scale, policy.eval_noise, rng
    )
    history = store.load_history()
    delta = _device_delta(policy, device)
    if unit > 0:
        new_history = [*history, (policy.eval_noise, 1.0, 1)]
        epsilon = device_epsilon(new_history, delta)
        if policy.epsilon_budget is not None and epsilon > policy.epsilon_budget:
            return None
        _charge(
            policy,
            store,
            local_event(
                round_=round_,
                device=str(key),
                release=(policy.eval_noise, 1.0, 1),
                clip_norm=unit,
                delta=delta,
                accountant="pld",
                epsilon=epsilon,
                kind="evaluate",
            ),
        )
    else:
        epsilon = device_epsilon(history, delta) if history else 0.0
    released["local-epsilon"] = epsilon
    return released


# -- Real devices: training on the device's own encrypted store -------------------------
#
# A SuperNode started by ``pollinate device join`` names its store in its node config.
# Flower starts one ClientApp process per message, so everything that must last (events,
# private parameters, the accountant's ledger, the received model and catalogue) lives
# in the store; the key comes from a 0600 key file or the platform keyring, never from
# the server. The device's privacy policy is the store's own, never the node config's or
# the server's.

#: Round-config keys a device keeps with the received model, to rebuild it for
#: recommendations (``EncryptedStore.save_global``).
MODEL_CONFIG_KEYS = ("model", "task", "embedding-dim", "history-len", "learn-global-mean",
                     "dropout", "loss")  # fmt: skip

_STORES: dict[str, Any] = {}


def device_store(node_config: Mapping[str, Any]) -> Any:
    """The device's :class:`~pollinate.client.store.EncryptedStore`, opened once per
    process (a ClientApp process serves one message)."""
    from pollinate.client.store import EncryptedStore

    path = str(node_config[STORE_NODE_KEY])
    store = _STORES.get(path)
    if store is None:
        store = _STORES[path] = EncryptedStore.open(Path(path), store_key(node_config))
    return store


def _message_catalogue(message: Message, store: Any) -> Any:
    """The catalogue sent with the model, else the one the store kept, else None."""
    from pollinate.shared.catalogue import Catalogue

    record = message.content.array_records.get(CATALOGUE_RECORD)
    if record is not None:
        return Catalogue.from_arrays(record_to_arrays(record))
    kept = store.global_model()
    return None if kept is None else kept.catalogue


def store_reply(
    kind: str,
    config: dict[str, Any],
    global_state: Mapping[str, np.ndarray],
    message: Message,
    context: Context,
) -> RecordDict:
    """A real device's reply to a train or evaluate request, from its store.

    The store's policy decides every privacy setting; under local DP each release is
    charged to the store's ledger (committed) before the reply exists, so a device that
    crashes or restarts continues its ε. The received global model and catalogue and the
    new private parameters are saved in the store; what the reply carries is logged there
    as a release (``Device.privacy()`` shows it).
    """
    try:
        store = device_store(context.node_config)
        policy = store.policy()
    except (StateStoreError, ConfigError) as exc:
        return _refusal(kind, "state", f"the device's store cannot be used: {exc}")
    if policy.simulated or policy.noise_seed is not None:
        return _refusal(kind, "state", "a real device's policy cannot be a simulated one")
    reason = weakening(policy, config, kind)
    if reason is not None:
        return _refusal(kind, "policy", reason)
    evaluating = kind == "evaluate"
    if evaluating and policy.evaluation == "refuse":
        return _refusal(kind, "evaluation", "this device's policy answers no evaluation")
    try:
        catalogue = _message_catalogue(message, store)
    except ConfigError as exc:
        return _refusal(kind, "no-data", f"the catalogue sent is unusable: {exc}")
    if catalogue is None:
        return _refusal(kind, "no-data", "no catalogue: the server sent none and none is kept")
    try:
        device = store.device_data(catalogue, str(config["task"]))
    except StateStoreError as exc:
        return _refusal(kind, "no-data", str(exc))
    use_one_thread()  # small models: one thread is fastest and leaves the app its cores
    round_ = integer(config["round"], "round")
    model = _build(config, device)
    model.load_global_state(global_state)
    private = store.load(before_round=round_ + 1 if evaluating else round_)
    if private is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for name, value in private.items():
                params[name].copy_(torch.as_tensor(value))
    # A real device's negatives, dropout masks and noise are always secret.
    gen = secret_torch_generator(secure_generator())
    arrays: dict[str, np.ndarray] = {}
    metrics: dict[str, Any]
    if not evaluating:
        if policy.local_dp:
            try:
                update, metrics = _train_private(policy, config, context, device, model, store,
                                                 gen)  # fmt: skip
            except StateStoreError as exc:
                return _refusal(kind, "state", str(exc))
            records: dict[str, Any] = {METRICS_RECORD: MetricRecord(metrics)}  # type: ignore[arg-type]
            if update is not None:
                records[UPDATE_RECORD] = arrays_to_record(update)
                arrays = update
            content = RecordDict(records)
            check_outgoing(content, kind="train", spec=spec_of(global_state), dp="local")
        else:
            outcome = train_device(model, device, train_config(config), gen)
            store.save(round_, _local_state(model))
            metrics = {"num-examples": outcome.n_examples, "train-loss": outcome.loss,
                       "train-seconds": outcome.seconds}  # fmt: skip
            arrays = outcome.update
            content = RecordDict(
                {UPDATE_RECORD: arrays_to_record(arrays), METRICS_RECORD: MetricRecord(metrics)}
            )
            check_outgoing(content, kind="train", spec=spec_of(global_state), dp=_mode(config))
    else:
        sums = evaluate_device(
            model, device, str(config["part"]), private_refit=private_refit(config)
        )
        if policy.evaluation == "noised":
            try:
                released = _noised_evaluation(policy, config, context, device, store, sums)
            except StateStoreError as exc:
                return _refusal(kind, "state", str(exc))
            except ConfigError as exc:
                return _refusal(kind, "evaluation", str(exc))
            if released is None:
                return _refusal(kind, "budget", "the noised evaluation would exceed the budget")
            sums = released
        metrics = dict(sums)
        content = RecordDict({METRICS_RECORD: MetricRecord(metrics)})
        check_outgoing(
            content, kind="evaluate", spec={},
            dp="local" if policy.local_dp else _mode(config),
            task=device.task, genres=device.data.item_genres is not None,
        )  # fmt: skip
    model_config = {k: config[k] for k in MODEL_CONFIG_KEYS if config.get(k) is not None}
    store.save_global(round_, global_state, catalogue, model_config)
    store.record_release(round_, kind, arrays, metrics)
    return content
