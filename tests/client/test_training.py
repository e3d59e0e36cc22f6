"""Plain local training: which learning rate each parameter group takes, and the
device optimizer."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from pollinate.client import training
from pollinate.client.app import train_config
from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.training import LocalTrainConfig, local_steps, sgd_groups, train_device
from pollinate.server.federation import DEVICE_KEYS
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError, ModelError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.tasks import load_task


@pytest.fixture(scope="module")
def ranking() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="ranking", synthetic_users=60, synthetic_items=40)
    )


def interest_for(device: DeviceData, dropout: float = 0.0) -> RecModel:
    return build_model(
        "interest",
        n_users=1,
        n_items=device.data.n_items,
        item_genres=device.data.item_genres,
        dim=4,
        history_len=5,
        dropout=dropout,
        generator=torch.Generator().manual_seed(0),
    )


def spread_private(model: RecModel) -> dict[str, torch.Tensor]:
    """Set the private parameters to values in [-1, 1] (far from their small initial
    ones, so a decay shows); return copies of them."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in model.local_parameter_names():
            values = torch.linspace(-1.0, 1.0, params[name].numel())
            params[name].copy_(values.view_as(params[name]))
    return {k: params[k].detach().clone() for k in model.local_parameter_names()}


def one_step(device: DeviceData, **kw: Any) -> dict[str, np.ndarray]:
    """The update of a single full-batch SGD step (no dropout: deterministic)."""
    cfg = LocalTrainConfig(
        loss="softmax",
        reg=0.0,
        negatives=7,
        epochs=1,
        batch_size=10_000,
        lr_global=0.05,
        lr_local=0.05,
        history_len=5,
        **kw,
    )
    return train_device(interest_for(device), device, cfg, torch.Generator().manual_seed(0)).update


def test_the_encoder_names_are_the_dense_global_weights(ranking: DeviceIndex) -> None:
    model = interest_for(ranking.device(0))
    encoder = set(model.encoder_parameter_names())
    rows = set(model.global_parameter_names()) - encoder
    assert rows == {"item_emb.weight", "item_bias.weight", "global_bias.weight"}
    assert "blocks.0.qkv.weight" in encoder and "pos_emb.weight" in encoder
    assert not encoder & set(model.local_parameter_names())
    mf = build_model("mf", n_users=1, n_items=5, dim=2)
    assert mf.encoder_parameter_names() == ()


def test_the_encoder_rate_scales_the_encoder_step_and_nothing_else(
    ranking: DeviceIndex,
) -> None:
    device = ranking.device(3)
    base = one_step(device)
    same = one_step(device, lr_encoder=0.05)
    slow = one_step(device, lr_encoder=0.005)
    encoder = set(interest_for(device).encoder_parameter_names())
    moved = 0
    for name, step in base.items():
        np.testing.assert_allclose(same[name], step, rtol=1e-6, atol=1e-9)
        if name in encoder:
            # One SGD step from the same point: the step is linear in the rate (up to
            # float32 rounding of after - before on weights near 1, such as LayerNorm's).
            np.testing.assert_allclose(slow[name], step / 10, rtol=1e-3, atol=2.5e-7)
            moved += bool(np.abs(step).max() > 0)
        else:
            np.testing.assert_allclose(slow[name], step, rtol=1e-6, atol=1e-9)
    assert moved >= 10, "the encoder barely trained: the test would prove nothing"


def test_without_an_encoder_rate_every_global_parameter_shares_lr_global(
    ranking: DeviceIndex,
) -> None:
    model = interest_for(ranking.device(0))
    cfg = LocalTrainConfig("softmax", 0.0, 7, 1, 8, 0.02, 0.3, 5)
    groups = sgd_groups(model, cfg)
    assert [g["lr"] for g in groups] == [0.3, 0.02]
    sizes = [len(g["params"]) for g in groups]  # type: ignore[arg-type]
    assert sizes == [len(model.local_parameter_names()), len(model.global_parameter_names())]


def test_the_encoder_gradient_limit_bounds_the_encoder_step_only(ranking: DeviceIndex) -> None:
    device = ranking.device(3)
    free = one_step(device)
    limited = one_step(device, encoder_max_grad_norm=1e-3)
    encoder = set(interest_for(device).encoder_parameter_names())
    free_norm = np.sqrt(sum(float((free[k].astype(np.float64) ** 2).sum()) for k in encoder))
    step_norm = np.sqrt(sum(float((limited[k].astype(np.float64) ** 2).sum()) for k in encoder))
    assert free_norm > 0.05 * 1e-3 * 10, "the unlimited step must exceed the limit"
    # One step of rate 0.05 on a gradient of norm at most 1e-3 (plus float32 rounding).
    assert step_norm <= 0.05 * 1e-3 * 1.01 + 1e-6
    for name in set(free) - encoder:
        np.testing.assert_allclose(limited[name], free[name], rtol=1e-6, atol=1e-9)


def test_a_first_adam_step_moves_every_coordinate_by_its_rate_whatever_the_batch(
    ranking: DeviceIndex,
) -> None:
    """Adam's first step from fresh moments is lr·g/(|g| + eps): about ``lr`` on every
    coordinate with a gradient, however many examples the summed loss adds up (the
    reason to offer it: SGD's encoder step grows with the batch)."""
    device = ranking.device(3)
    adam = one_step(device, optimizer="adam", lr_encoder=0.01)
    sgd = one_step(device, lr_encoder=0.01)
    encoder = set(interest_for(device).encoder_parameter_names())
    for name, step in adam.items():
        lr = 0.01 if name in encoder else 0.05
        moved = np.abs(step[np.abs(sgd[name]) > 1e-6])
        if moved.size == 0:
            continue
        # float32 rounding of after - before on weights near 1 (LayerNorm), as above.
        np.testing.assert_allclose(moved, lr, rtol=1e-3, atol=2e-7, err_msg=name)
        assert np.abs(step).max() <= lr * (1 + 1e-3) + 2e-7, name
    sgd_max = max(float(np.abs(sgd[k]).max()) for k in encoder)
    assert sgd_max > 3 * 0.01, "SGD's summed-loss step should exceed Adam's on this batch"


def test_adam_encoder_steps_the_encoder_with_adam_and_the_rest_with_sgd(
    ranking: DeviceIndex,
) -> None:
    """``adam-encoder``: after one full-batch step the encoder's moved coordinates have
    moved by exactly its rate (Adam's first step is ``lr * sign(g)``), and every other
    global parameter has the update of plain SGD at its own rate."""
    device = ranking.device(3)
    mixed = one_step(device, optimizer="adam-encoder", lr_encoder=0.01)
    sgd = one_step(device, lr_encoder=0.01)
    encoder = set(interest_for(device).encoder_parameter_names())
    assert encoder and set(mixed) == set(sgd)
    checked = 0
    for name, step in mixed.items():
        if name in encoder:
            moved = np.abs(step[np.abs(sgd[name]) > 1e-6])
            np.testing.assert_allclose(moved, 0.01, rtol=1e-3, atol=2e-7, err_msg=name)
            checked += moved.size
        else:
            np.testing.assert_allclose(step, sgd[name], rtol=1e-6, atol=1e-9, err_msg=name)
    assert checked > 0, "no encoder weight moved: the Adam half of the test would prove nothing"
    rows_moved = [k for k in mixed if k not in encoder and np.abs(mixed[k]).max() > 1e-4]
    assert rows_moved, "no item row moved: the SGD half of the test would prove nothing"


def test_adam_encoder_keeps_the_private_decay(ranking: DeviceIndex) -> None:
    """The private parameters stay on SGD, decay included: ``p - lr * (g + w * p)``."""
    device = ranking.device(3)
    base = LocalTrainConfig("softmax", 0.0, 7, 1, 10_000, 0.05, 0.05, 5, lr_encoder=0.01)
    finals = []
    for cfg in (
        LocalTrainConfig(**{**base.__dict__, "private_weight_decay": 0.5}),
        LocalTrainConfig(
            **{**base.__dict__, "private_weight_decay": 0.5, "optimizer": "adam-encoder"}
        ),
    ):
        model = interest_for(device)
        params = dict(model.named_parameters())
        spread_private(model)
        train_device(model, device, cfg, torch.Generator().manual_seed(0))
        finals.append({k: params[k].detach().clone() for k in model.local_parameter_names()})
    for name in finals[0]:
        torch.testing.assert_close(finals[1][name], finals[0][name], rtol=1e-6, atol=1e-7)


def test_adam_encoder_needs_an_encoder(ranking: DeviceIndex) -> None:
    with pytest.raises(ValueError, match="needs an encoder and lr_encoder"):
        one_step(ranking.device(0), optimizer="adam-encoder")


def test_an_unknown_device_optimizer_is_refused(ranking: DeviceIndex) -> None:
    with pytest.raises(ValueError, match="unknown device optimizer 'lion'"):
        one_step(ranking.device(0), optimizer="lion")


def test_the_private_decay_shrinks_the_private_parameters_and_nothing_else(
    ranking: DeviceIndex,
) -> None:
    """One SGD step with decay ``w`` moves each private weight by ``-lr_local * w * p``
    more than the same step without it (the optimizer adds ``w * p`` to the gradient);
    the update that leaves the device is the same."""
    device = ranking.device(3)
    cfg = LocalTrainConfig("softmax", 0.0, 7, 1, 10_000, 0.05, 0.05, 5)
    results = []
    for decay in (0.0, 0.5):
        model = interest_for(device)
        params = dict(model.named_parameters())
        start = spread_private(model)
        step_cfg = LocalTrainConfig(**{**cfg.__dict__, "private_weight_decay": decay})
        out = train_device(model, device, step_cfg, torch.Generator().manual_seed(0))
        after = {k: params[k].detach().clone() for k in model.local_parameter_names()}
        results.append((start, after, out.update))
    (start, plain, update), (_, decayed, decayed_update) = results
    for name in plain:
        expected = plain[name] - 0.05 * 0.5 * start[name]
        torch.testing.assert_close(decayed[name], expected, rtol=1e-5, atol=1e-6)
        assert (decayed[name] - plain[name]).abs().max() > 0.01, name
    for name, step in update.items():
        np.testing.assert_allclose(decayed_update[name], step, rtol=1e-6, atol=1e-9)


def device_config(keys: dict[str, Any]) -> dict[str, Any]:
    """What an interest ranking run with ``keys`` sends its devices (``DEVICE_KEYS``)."""
    cfg = FederationConfig.from_mapping({"task": "ranking", "model": "interest", **keys})
    flat = cfg.model_dump(by_alias=True)
    return {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}


def test_the_private_decay_reaches_the_device_from_the_run_config() -> None:
    assert "private-weight-decay" in DEVICE_KEYS
    assert train_config(device_config({"private-weight-decay": 0.02})).private_weight_decay == 0.02
    with pytest.raises(ConfigError, match=r"private.weight.decay"):
        FederationConfig.from_mapping({"private-weight-decay": -1})


def test_the_dropout_reaches_the_device_and_server_models(ranking: DeviceIndex) -> None:
    """``--dropout`` sets every dropout layer of the model a device trains (and of the
    server's copy); unset, the model keeps its default."""
    from pollinate.client.app import _build
    from pollinate.server.federation import build_run_model
    from pollinate.shared.tasks import catalog_of

    assert "dropout" in DEVICE_KEYS
    device = ranking.device(0)
    for dropout, expected in ((0.3, 0.3), (None, 0.2)):
        values = {"task": "ranking", "model": "interest", "embedding-dim": 4, "dropout": dropout}
        cfg = FederationConfig.from_mapping({k: v for k, v in values.items() if v is not None})
        flat = cfg.model_dump(by_alias=True)
        device_cfg = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
        server = build_run_model(cfg, catalog_of(ranking.task_data.data))
        for model in (_build(device_cfg, device), server):
            rates = {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}
            assert rates == {expected}, (dropout, rates)


def test_dropout_masks_come_from_the_device_generator(ranking: DeviceIndex) -> None:
    """A round with dropout is reproducible from the device's generator whatever state
    torch's global RNG is in (torch seeds it at random per process), and it leaves that
    state as it found it."""
    device = ranking.device(3)
    cfg = LocalTrainConfig("softmax", 0.0, 7, 2, 8, 0.05, 0.05, 5)

    def round_with_dropout(global_seed: int, device_seed: int) -> dict[str, np.ndarray]:
        torch.manual_seed(global_seed)
        model = interest_for(device, dropout=0.5)
        state = torch.get_rng_state()
        out = train_device(model, device, cfg, torch.Generator().manual_seed(device_seed))
        assert torch.equal(torch.get_rng_state(), state)
        return out.update

    first, second = round_with_dropout(1, 7), round_with_dropout(2, 7)
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)
    other = round_with_dropout(1, 8)  # another device generator: other masks and batches
    assert any(not np.array_equal(other[k], first[k]) for k in first)


def test_local_steps_counts_batches_over_epochs_up_to_the_cap() -> None:
    assert local_steps(100, 32, 5, None) == 5 * 4  # ceil(100 / 32) = 4 batches an epoch
    assert local_steps(100, 32, 5, 7) == 7
    assert local_steps(100, 32, 5, 50) == 20  # a cap above the full count changes nothing
    assert local_steps(0, 32, 5, 3) == 0


def test_the_step_cap_ends_the_round_after_that_many_optimizer_steps(
    ranking: DeviceIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    device = max(
        (ranking.device(u) for u in range(ranking.n_devices)), key=lambda d: len(d.split.train)
    )
    n = len(device.split.train)
    assert n > 8  # four batches of 2 or more an epoch
    steps = [0]
    real = training.local_optimizer

    def counting(model: RecModel, cfg: LocalTrainConfig) -> torch.optim.Optimizer:
        opt = real(model, cfg)
        opt.register_step_post_hook(lambda *_: steps.__setitem__(0, steps[0] + 1))
        return opt

    monkeypatch.setattr(training, "local_optimizer", counting)

    def run(max_steps: int | None) -> dict[str, np.ndarray]:
        steps[0] = 0
        cfg = LocalTrainConfig(
            loss="softmax", reg=0.0, negatives=7, epochs=3, batch_size=n // 4, lr_global=0.05,
            lr_local=0.05, history_len=5, max_steps=max_steps,
        )  # fmt: skip
        gen = torch.Generator().manual_seed(0)
        return train_device(interest_for(device), device, cfg, gen).update

    uncapped = run(None)
    assert steps[0] == 3 * math.ceil(n / (n // 4))
    capped = run(6)
    assert steps[0] == 6  # stops inside the second epoch
    assert any(not np.allclose(capped[k], uncapped[k]) for k in uncapped)
    # A cap at or above the full count is exactly the uncapped round (same draws).
    same = run(1000)
    for k in uncapped:
        np.testing.assert_array_equal(same[k], uncapped[k])


def test_the_step_cap_reaches_the_device_from_the_run_config() -> None:
    assert "max-local-steps" in DEVICE_KEYS
    device_cfg = device_config({"max-local-steps": 25})
    assert train_config(device_cfg).max_steps == 25
    assert train_config({**device_cfg, "max-local-steps": None}).max_steps is None
    with pytest.raises(ConfigError, match=r"max.local.steps"):
        FederationConfig.from_mapping({"max-local-steps": 0})


def test_the_layout_loads_global_state_as_the_model_does(ranking: DeviceIndex) -> None:
    """``Layout.load_global`` (each message's load) equals ``RecModel.load_global_state``
    and refuses the same wrong names and shapes."""
    device = ranking.device(0)
    state = {k: v + 0.5 for k, v in interest_for(device).global_state().items()}
    by_model, by_layout = interest_for(device), interest_for(device)
    by_model.load_global_state(state)
    training.layout(by_layout).load_global(state)
    for name, value in by_model.global_state().items():
        assert np.array_equal(value, by_layout.global_state()[name])
    lay = training.layout(by_layout)
    first = lay.global_[0]
    with pytest.raises(ModelError, match="do not match"):
        lay.load_global({k: v for k, v in state.items() if k != first})
    with pytest.raises(ModelError, match="has shape"):
        lay.load_global({**state, first: np.zeros((1, 1), dtype=np.float32)})


def test_a_device_is_cut_once_and_its_rows_are_read_only(ranking: DeviceIndex) -> None:
    first, again = ranking.device(5), ranking.device(5)
    assert first is again
    with pytest.raises(ValueError, match="read-only"):
        first.data.items[0] = 1
    with pytest.raises(ValueError, match="read-only"):
        first.split.train[0] = 1
