"""The numpy ``mf`` step against torch's autograd step it replaces: the same updates, the
same private parameters, the same loss, the generator left in the same state."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import pytest
import torch

from pollinate.client import mf_sgd
from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.training import (
    LocalTrainConfig,
    autograd_steps,
    layout,
    local_steps,
    train_device,
)
from pollinate.shared.data.splits import Split
from pollinate.shared.models.base import build_model
from pollinate.shared.models.mf import BiasedMF
from pollinate.shared.tasks import load_task


@pytest.fixture(scope="module")
def rating() -> DeviceIndex:
    return DeviceIndex(load_task("synthetic", task="rating", synthetic_users=40,
                                 synthetic_items=30))  # fmt: skip


def cfg(**kw: Any) -> LocalTrainConfig:
    base: dict[str, Any] = dict(loss="mse", reg=0.05, negatives=1, epochs=2, batch_size=4,
                                lr_global=0.05, lr_local=0.03, history_len=0)  # fmt: skip
    return LocalTrainConfig(**{**base, **kw})


def model_for(device: DeviceData, seed: int, learn_mu: bool = True) -> BiasedMF:
    model = build_model("mf", n_users=1, n_items=device.data.n_items, dim=5,
                        global_mean=3.0, learn_global_mean=learn_mu,
                        generator=torch.Generator().manual_seed(seed))  # fmt: skip
    assert isinstance(model, BiasedMF)
    with torch.no_grad():  # non-zero biases, so every term of the gradient shows
        model.item_bias.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(seed))
        model.user_bias.weight.fill_(0.2)
    return model


def both(device: DeviceData, c: LocalTrainConfig, seed: int, learn_mu: bool = True) -> Any:
    """Run the numpy and the autograd steps from the same model and generator state."""
    out = []
    for numpy_path in (True, False):
        model = model_for(device, seed, learn_mu)
        gen = torch.Generator().manual_seed(100 + seed)
        steps = local_steps(len(device.split.train), c.batch_size, c.epochs, c.max_steps)
        if numpy_path:
            assert mf_sgd.applies(model, device, c)
            got = mf_sgd.train_steps(model, device, c, gen, steps, layout(model).global_)
        else:
            got = autograd_steps(model, device, c, gen, steps)
        out.append((got, layout(model).local_state(), gen.get_state()))
    return out


CASES = [
    {},
    {"reg": 0.0},
    {"batch_size": 1, "epochs": 1},
    {"batch_size": 1000, "epochs": 3},
    {"max_steps": 3},
    {"private_weight_decay": 0.1},
    {"lr_global": 0.5, "lr_local": 0.2, "reg": 0.2},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("learn_mu", [True, False])
def test_numpy_steps_equal_the_autograd_steps(
    rating: DeviceIndex, case: dict[str, Any], learn_mu: bool
) -> None:
    c = cfg(**case)
    for partition in range(0, 40, 7):
        device = rating.device(partition)
        (fast, fast_private, fast_gen), (slow, slow_private, slow_gen) = both(
            device, c, partition, learn_mu
        )
        (f_update, f_loss, f_count), (s_update, s_loss, s_count) = fast, slow
        assert list(f_update) == list(s_update)  # same names, same order
        moved = 0.0
        for name in s_update:
            assert f_update[name].dtype == s_update[name].dtype == np.float32
            np.testing.assert_allclose(f_update[name], s_update[name], rtol=2e-5, atol=2e-7)
            moved += float(np.abs(s_update[name]).sum())
        assert moved > 1e-3  # the comparison is not of two zero updates
        for name in slow_private:
            np.testing.assert_allclose(fast_private[name], slow_private[name], rtol=2e-5,
                                       atol=2e-7)  # fmt: skip
        assert f_count == s_count
        assert f_loss == pytest.approx(s_loss, rel=1e-5)
        assert torch.equal(fast_gen, slow_gen)  # the same draws: later draws agree too


def test_an_item_twice_in_a_batch_takes_both_gradients(rating: DeviceIndex) -> None:
    device = rating.device(3)
    n = len(device.split.train)
    rows = np.concatenate([device.split.train, device.split.train[: n // 2]])
    doubled = replace(device, split=Split(train=rows, valid=device.split.valid,
                                          test=device.split.test))  # fmt: skip
    (fast, _, _), (slow, _, _) = both(doubled, cfg(batch_size=n + n // 2, epochs=2), 3)
    for name in slow[0]:
        np.testing.assert_allclose(fast[0][name], slow[0][name], rtol=2e-5, atol=2e-7)


def test_a_device_without_rows_moves_nothing(rating: DeviceIndex) -> None:
    device = rating.device(0)
    empty = replace(device, split=Split(train=device.split.train[:0], valid=device.split.valid,
                                        test=device.split.test))  # fmt: skip
    model = model_for(empty, 0)
    out = train_device(model, empty, cfg(), torch.Generator().manual_seed(0))
    assert out.n_examples == 0 and out.loss == 0.0
    assert all(not v.any() for v in out.update.values())


def test_other_losses_and_optimizers_take_the_autograd_path(rating: DeviceIndex) -> None:
    device = rating.device(0)
    model = model_for(device, 0)
    assert mf_sgd.applies(model, device, cfg())
    assert not mf_sgd.applies(model, device, cfg(optimizer="adam"))
    assert not mf_sgd.applies(model, device, cfg(loss="bpr"))
    ranking = DeviceIndex(load_task("synthetic", task="ranking", synthetic_users=10,
                                    synthetic_items=20)).device(0)  # fmt: skip
    assert not mf_sgd.applies(model_for(ranking, 0), ranking, cfg(loss="softmax"))


def test_the_initial_private_state_is_the_built_models(rating: DeviceIndex) -> None:
    """``draw_private_state`` replays the initialisation's draws without building."""
    for n_items, dim in [(1682, 8), (5, 3), (1, 1), (40, 64)]:
        torch.manual_seed(n_items)
        built = BiasedMF(n_users=1, n_items=n_items, dim=dim, init_std=0.3)
        torch.manual_seed(n_items)
        drawn = built.draw_private_state()
        assert drawn.keys() == set(built.local_parameter_names())
        for name, value in drawn.items():
            assert np.array_equal(value, dict(built.named_parameters())[name].detach().numpy())
