"""A shard checks and logs each device's reply without packing it into a message: the
allow-list check over the decoded arrays is the check of a decoded message, verdict for
verdict, and the log line is the one Flower's server writes for that message."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from pollinate.client.app import DeviceReply
from pollinate.client.training import LocalTrainConfig, PlainSGD, sgd_groups
from pollinate.server.runlog import message_entry
from pollinate.shared.config import FederationConfig
from pollinate.shared.models.base import build_model
from pollinate.shared.wire import AllowListError, ParamSpec, check_incoming, check_reply, spec_of
from pollinate.simulations.engine import simulation_policy
from pollinate.simulations.fast.shard import Shard, ShardSpec, reply_entry

SPEC_ARRAYS = {
    "item_factors.weight": np.zeros((6, 3), dtype=np.float32),
    "item_bias.weight": np.zeros((6, 1), dtype=np.float32),
}
SPEC: ParamSpec = spec_of(SPEC_ARRAYS)
METRICS: dict[str, int | float] = {"num-examples": 4, "train-loss": 0.5, "train-seconds": 0.01}


def update(**changes: Any) -> dict[str, Any]:
    out: dict[str, Any] = {k: v.copy() for k, v in SPEC_ARRAYS.items()}
    out["item_factors.weight"][2] = 0.25
    out.update(changes)
    return out


MALFORMED: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    ("arrays", update(**{"user_factors.weight": np.zeros((1, 3), np.float32)}), METRICS),
    ("arrays", {"item_factors.weight": SPEC_ARRAYS["item_factors.weight"]}, METRICS),
    ("shape", update(**{"item_bias.weight": np.zeros((5, 1), np.float32)}), METRICS),
    ("dtype", update(**{"item_bias.weight": np.zeros((6, 1), np.float64)}), METRICS),
    ("non-finite", update(**{"item_bias.weight": np.full((6, 1), np.nan, np.float32)}), METRICS),
    ("norm", update(**{"item_bias.weight": np.full((6, 1), 1e6, np.float32)}), METRICS),
    ("metric-keys", update(), {**METRICS, "local-epsilon": 1.0}),
    ("metric-keys", update(), {"num-examples": 4, "train-loss": 0.5}),
    ("metric-type", update(), {**METRICS, "num-examples": [4]}),
    ("metric-value", update(), {**METRICS, "num-examples": -1}),
    ("non-finite", update(), {**METRICS, "train-loss": float("inf")}),
]


@pytest.mark.parametrize(("reason", "arrays", "metrics"), MALFORMED)
def test_the_check_over_arrays_is_the_check_of_the_decoded_message(
    reason: str, arrays: dict[str, Any], metrics: dict[str, Any]
) -> None:
    content = DeviceReply("train", metrics, arrays, dp="none").content()
    with pytest.raises(AllowListError) as on_message:
        check_incoming(content, kind="train", spec=SPEC, dp="none")
    with pytest.raises(AllowListError) as on_arrays:
        check_reply("train", arrays, metrics, spec=SPEC, incoming=True, dp="none")
    assert on_message.value.reason == on_arrays.value.reason == reason


def test_a_well_formed_reply_and_a_refusal_pass_both_checks_alike() -> None:
    reply = DeviceReply("train", dict(METRICS), update(), dp="none")
    got = check_reply("train", reply.update, reply.metrics, spec=SPEC, incoming=True, dp="none")
    ref = check_incoming(reply.content(), kind="train", spec=SPEC, dp="none")
    assert got.metrics == ref.metrics and got.update is not None and ref.update is not None
    for k in SPEC:
        np.testing.assert_array_equal(got.update[k], ref.update[k])
    refusal = DeviceReply("train", {"refused": 2})
    assert refusal.refused
    assert check_reply("train", None, refusal.metrics, spec=SPEC, incoming=True).refused == (
        check_incoming(refusal.content(), kind="train", spec=SPEC).refused
    )
    # A torch tensor is not what a message decodes to: refused as undecodable.
    with pytest.raises(AllowListError, match="not a numpy array"):
        tensors = {k: torch.as_tensor(v) for k, v in update().items()}
        check_reply("train", tensors, METRICS, spec=SPEC, incoming=False)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "reply",
    [
        DeviceReply("train", dict(METRICS), update(), dp="none"),
        DeviceReply("train", {"local-epsilon": 1.5, "dp-stopped": 1}, None, dp="local"),
        DeviceReply("train", {"refused": 1}),
        DeviceReply("evaluate", {"se_sum": 1.0, "ae_sum": 1.0, "count": 2}, task="rating"),
    ],
)
def test_the_log_line_of_a_reply_is_the_line_of_its_message(reply: DeviceReply) -> None:
    assert reply_entry(4, 17, reply) == message_entry(4, "up", 17, reply.kind, reply.content())


def test_a_shard_rejects_and_counts_a_malformed_reply(tmp_path: Path) -> None:
    cfg = FederationConfig.from_mapping({"dataset": "synthetic", "out": str(tmp_path)})
    shard = Shard(
        ShardSpec(
            (0,),
            replace(simulation_policy(cfg), run_ledger=None),
            SPEC,
            "none",
            "rating",
            False,
            None,
            "equal",
        )
    )
    entries: list[dict[str, Any]] = []
    rejected: dict[str, int] = {}
    bad = update(**{"item_bias.weight": np.full((6, 1), np.inf, np.float32)})
    got = shard._check(DeviceReply("train", dict(METRICS), bad), 1, 0, entries, rejected, {})
    assert got is None and rejected == {"non-finite": 1}
    assert entries[0]["direction"] == "verdict" and entries[0]["reason"] == "non-finite"


def test_plain_sgd_steps_exactly_as_torch_sgd() -> None:
    """The device's plain SGD is torch.optim.SGD bit for bit, private decay included."""
    cfg = LocalTrainConfig(loss="mse", reg=0.05, negatives=0, epochs=1, batch_size=4,
                           lr_global=0.05, lr_local=0.3, history_len=0,
                           private_weight_decay=0.1)  # fmt: skip
    models = []
    for _ in range(2):
        torch.manual_seed(0)
        models.append(build_model("mf", n_users=1, n_items=7, dim=3, global_mean=3.0))
    ours, ref = models
    start = {n: p.detach().clone() for n, p in ours.named_parameters()}
    plain, torch_sgd = PlainSGD(sgd_groups(ours, cfg)), torch.optim.SGD(sgd_groups(ref, cfg))
    gen = torch.Generator().manual_seed(1)
    for _ in range(5):
        items = torch.randint(0, 7, (4,), generator=gen)
        ratings = torch.rand(4, generator=gen) * 4 + 1
        for model, opt in ((ours, plain), (ref, torch_sgd)):
            batch = {"user": torch.zeros(4, dtype=torch.long), "item": items}
            loss = ((model.score(batch, items) - ratings) ** 2).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for (name, a), (_, b) in zip(ours.named_parameters(), ref.named_parameters(), strict=True):
        assert torch.equal(a, b), name
    # Not vacuous: the private and global parameters both moved.
    for name in ("user_factors.weight", "item_factors.weight", "item_bias.weight"):
        assert not torch.equal(dict(ours.named_parameters())[name], start[name]), name


def test_enrolment_with_the_round_config_loads_the_data_and_model_first(tmp_path: Path) -> None:
    """A shard enrolled with the run's device config has the dataset's partition and the
    shared model ready, so its first training round builds neither."""
    from pollinate.client import app as client_app
    from pollinate.server.federation import DEVICE_KEYS

    cfg = FederationConfig.from_mapping(
        {"dataset": "synthetic", "synthetic-users": 60, "synthetic-items": 40,
         "out": str(tmp_path)}
    )  # fmt: skip
    shard = Shard(ShardSpec((0, 1, 2), replace(simulation_policy(cfg), run_ledger=None), SPEC,
                            "none", "rating", False, None, "equal"))  # fmt: skip
    flat = cfg.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    client_app._MODELS.clear()
    client_app._device_index.cache_clear()
    assert shard.enroll() == [0, 1, 2]
    assert not client_app._MODELS and client_app._device_index.cache_info().currsize == 0
    assert shard.enroll(dict(config, round=0)) == [0, 1, 2]
    assert len(client_app._MODELS) == 1 and client_app._device_index.cache_info().currsize == 1
