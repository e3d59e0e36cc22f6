"""The Flower ClientApp of a Pollinate device (Message API).

The same object runs in simulations (one virtual device per user, selected by
``node_config["partition-id"]``) and in deployments. On each ``train`` message the
device restores its private parameters, loads the global ones, trains, saves its private
parameters, and replies with the update to the global parameters and a few metrics, all
checked against the allow-list before they leave.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from pollinate.client.adaptation import LocalAdaptation, adapt_locally
from pollinate.client.device_data import DeviceData, DeviceIndex, with_validation_in_training
from pollinate.client.dp_training import (
    LocalDPConfig,
    default_local_delta,
    device_epsilon,
    train_device_dp,
)
from pollinate.client.evaluation import evaluate_device
from pollinate.client.local_state import ContextStateStore, DiskStateStore, LocalStateStore
from pollinate.client.training import LocalTrainConfig, check_finite, train_device
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.ledger import LedgerWriter, local_event
from pollinate.shared.tasks import load_task
from pollinate.shared.threads import use_one_thread
from pollinate.shared.wire import (
    CONFIG_RECORD,
    GLOBAL_RECORD,
    METRICS_RECORD,
    UPDATE_RECORD,
    arrays_to_record,
    check_outgoing,
    integer,
    record_to_arrays,
    spec_of,
)

app = ClientApp()


@lru_cache(maxsize=4)
def _device_index(
    dataset: str,
    data_dir: str | None,
    task: str,
    fold: int,
    seed: int,
    synthetic_users: int,
    synthetic_items: int,
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
    )
    device = index.device(int(context.node_config["partition-id"]))
    return with_validation_in_training(device) if config.get("train-on-validation") else device


def device_generator(
    config: Mapping[str, Any], round_: int, partition: int, salt: int
) -> torch.Generator:
    """Per (run seed, round, device) generator: reproducible, independent across devices."""
    seq = np.random.SeedSequence([int(config["seed"]), round_, partition, salt])
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))


def _state_store(config: Mapping[str, Any], context: Context) -> LocalStateStore:
    root = config.get("device-state-dir")
    if root:
        # A simulated device's "disk" needs atomicity, not durability against power loss.
        return DiskStateStore(
            Path(str(root)),
            f"device-{context.node_config['partition-id']}",
            durable=not _simulated(context),
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
    with torch.random.fork_rng():
        init = device_generator(config, 0, partition, salt=2)
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=init)))
        return _build(config, device)


def _simulated(context: Context) -> bool:
    return "partition-id" in context.node_config


def _prepare(
    message: Message, context: Context, *, evaluating: bool
) -> tuple[dict[str, Any], DeviceData, RecModel, LocalStateStore, torch.Generator]:
    config = dict(message.content.config_records[CONFIG_RECORD])
    if _simulated(context):
        # A simulated device gets one core; thread pools would oversubscribe it.
        use_one_thread()
    device = simulated_device(config, context)
    partition = int(context.node_config["partition-id"])
    round_ = integer(config["round"], "round")
    gen = device_generator(config, round_, partition, salt=int(evaluating))
    model = fresh_model(config, device, partition)
    model.load_global_state(record_to_arrays(message.content.array_records[GLOBAL_RECORD]))
    store = _state_store(config, context)
    # Training in round r starts from the state of an earlier round; evaluating after
    # round r uses the state that round r produced.
    private = store.load(before_round=round_ + 1 if evaluating else round_)
    if private is not None:
        params = dict(model.named_parameters())
        with torch.no_grad():
            for k, v in private.items():
                params[k].copy_(torch.as_tensor(v))
    return config, device, model, store, gen


def _local_state(model: RecModel) -> dict[str, np.ndarray]:
    params = dict(model.named_parameters())
    return {k: params[k].detach().numpy().copy() for k in model.local_parameter_names()}


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


def local_dp_config(config: Mapping[str, Any]) -> LocalDPConfig:
    """The device's DP-SGD settings from the round's config."""
    return LocalDPConfig(
        clip_norm=float(config["local-clip"]),
        noise_multiplier=_optional_float(config, "local-noise"),
        target_epsilon=_optional_float(config, "local-epsilon"),
        planned_rounds=int(config["rounds"]),
        delta=_optional_float(config, "local-delta"),
        epsilon_budget=_optional_float(config, "local-epsilon-budget"),
        accountant=str(config.get("local-accountant", "rdp")),  # type: ignore[arg-type]
        secure_rng=config.get("noise-seed") is None,
        grad_sample_mode=str(config.get("local-grad-sample-mode", "hooks")),  # type: ignore[arg-type]
    )


def _ledger(config: Mapping[str, Any], context: Context) -> LedgerWriter | None:
    """Where this device's DP releases are logged: the run's ledger for a simulated device,
    its own state directory for a real one (which never writes to a server path)."""
    if _simulated(context) and config.get("run-ledger"):
        return LedgerWriter(Path(str(config["run-ledger"])))
    root = config.get("device-state-dir")
    if root:
        return LedgerWriter(Path(str(root)) / f"device-{device_key(context)}" / "ledger.jsonl")
    return None


def _train_private(
    config: dict[str, Any],
    context: Context,
    device: DeviceData,
    model: RecModel,
    store: LocalStateStore,
) -> tuple[dict[str, np.ndarray] | None, dict[str, int | float]]:
    """A DP-SGD round. The accountant's history, the private parameters and the ledger
    event are all written *before* this returns, that is before the update can leave."""
    round_ = int(config["round"])
    dp = local_dp_config(config)
    history = store.load_history()
    partition = int(context.node_config.get("partition-id", 0))
    noise_gen = device_generator({"seed": config.get("noise-seed") or 0}, round_, partition, salt=3)
    ledger = _ledger(config, context)
    key = str(device_key(context))

    def before_release(new_history: list[tuple[float, float, int]]) -> None:
        store.save_history(new_history)
        private = _local_state(model)
        # A diverged round is still charged (whether it diverged depends on the data);
        # its private state is not kept, and check_finite below stops the update.
        if all(np.isfinite(v).all() for v in private.values()):
            store.save(round_, private)
        if ledger is not None:
            delta = (
                dp.delta if dp.delta is not None else default_local_delta(len(device.split.train))
            )
            ledger.append(
                local_event(
                    round_=round_,
                    device=key,
                    release=new_history[-1],
                    clip_norm=dp.clip_norm,
                    delta=delta,
                    accountant=dp.accountant,
                    epsilon=device_epsilon(new_history, delta, dp.accountant),
                )
            )

    outcome = train_device_dp(
        model, device, train_config(config), dp, history, noise_gen,
        before_release=before_release,
    )  # fmt: skip
    if outcome.update is not None:
        check_finite(model, outcome.update)
    metrics: dict[str, int | float] = {
        "num-examples": outcome.n_examples,
        "train-seconds": outcome.seconds,
        "local-epsilon": outcome.epsilon,
    }
    if outcome.update is None:
        metrics["dp-stopped"] = 1
    return outcome.update, metrics


@app.train()
def train(message: Message, context: Context) -> Message:
    config, device, model, store, gen = _prepare(message, context, evaluating=False)
    spec = spec_of(model.global_state())
    if config.get("dp") in ("local", "both"):
        update, metrics = _train_private(config, context, device, model, store)
        records: dict[str, Any] = {METRICS_RECORD: MetricRecord(metrics)}  # type: ignore[arg-type]
        if update is not None:
            records[UPDATE_RECORD] = arrays_to_record(update)
        content = RecordDict(records)
        check_outgoing(content, kind="train", spec=spec)
        return Message(content=content, reply_to=message)
    outcome = train_device(model, device, train_config(config), gen)
    store.save(int(config["round"]), _local_state(model))
    content = RecordDict(
        {
            UPDATE_RECORD: arrays_to_record(outcome.update),
            METRICS_RECORD: MetricRecord(
                {
                    "num-examples": outcome.n_examples,
                    "train-loss": outcome.loss,
                    "train-seconds": outcome.seconds,
                }
            ),
        }
    )
    check_outgoing(content, kind="train", spec=spec)
    return Message(content=content, reply_to=message)


def device_key(context: Context) -> int:
    """A stable pseudonymous key: the partition-id of a simulated device, else a random
    63-bit key kept in the node's state."""
    if "partition-id" in context.node_config:
        return int(context.node_config["partition-id"])
    record = context.state.config_records.get("pollinate.device-key")
    if record is None:
        record = ConfigRecord({"key": secrets.randbits(63)})
        context.state["pollinate.device-key"] = record
    return integer(record["key"], "device-key")


@app.query("enroll")
def enroll(message: Message, context: Context) -> Message:
    content = RecordDict({METRICS_RECORD: MetricRecord({"device-key": device_key(context)})})
    check_outgoing(content, kind="enroll", spec={})
    return Message(content=content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    config, device, model, _, gen = _prepare(message, context, evaluating=True)
    adapt = local_adaptation(config)
    if adapt is not None:
        # The adapted copy is scored and dropped: evaluating saves no state.
        adapt_locally(model, device, train_config(config), adapt, gen)
    sums = evaluate_device(model, device, str(config["part"]), private_refit=private_refit(config))
    content = RecordDict({METRICS_RECORD: MetricRecord(sums)})  # type: ignore[arg-type]
    check_outgoing(content, kind="evaluate", spec={})
    return Message(content=content, reply_to=message)
