"""The noise that a device's ε describes: its scale, its source, and where it lands.

The item-table rows that no training example touches have a zero gradient at every step,
so under plain SGD (learning rate ``lr``, no weight decay) their update is exactly
``-lr · Σ_t noise_t``: ``steps`` independent ``N(0, (z·C)²)`` draws per coordinate. Its
standard deviation must be ``lr · C · z · √steps``. With Opacus's ``"mean"`` reduction it
would be divided by the expected batch size (33 here), and a noise scaled down by any
factor would show directly.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch

from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.dp_training import DPTrainOutcome, LocalDPConfig, train_device_dp
from pollinate.client.training import LocalTrainConfig, train_device
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.randomness import secure_generator, seeded_generator
from pollinate.shared.tasks import load_task

LR = 0.1
CLIP = 0.5
Z = 1.3
DIM = 16
BIG_DEVICE = 31  # 149 training rows touching 149 of 378 items


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def index() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=400)
    )


@pytest.fixture(scope="module")
def device(index: DeviceIndex) -> DeviceData:
    return index.device(BIG_DEVICE)


def model_for(device: DeviceData) -> RecModel:
    return build_model(
        "mf",
        n_users=1,
        n_items=device.data.n_items,
        item_genres=device.data.item_genres,
        dim=DIM,
        global_mean=3.0,
        generator=torch.Generator().manual_seed(0),
    )


def dp_config(**kw: Any) -> LocalDPConfig:
    args: dict[str, Any] = {
        "clip_norm": CLIP,
        "noise_multiplier": Z,
        "target_epsilon": None,
        "planned_rounds": 10,
        "delta": None,
        "epsilon_budget": None,
    }
    return LocalDPConfig(**(args | kw))


def train_config(**kw: Any) -> LocalTrainConfig:
    args: dict[str, Any] = {
        "loss": "mse",
        "reg": 0.0,
        "negatives": 1,
        "epochs": 2,
        "batch_size": 32,
        "lr_global": LR,
        "lr_local": LR,
        "history_len": 1,
    }
    return LocalTrainConfig(**(args | kw))


def untouched(device: DeviceData) -> np.ndarray:
    touched = np.unique(device.data.items[device.split.train])
    rows = np.setdiff1d(np.arange(device.data.n_items), touched)
    assert len(rows) > 200
    return rows


def run(
    device: DeviceData,
    noise_rng: np.random.Generator | None,
    *,
    torch_seed: int = 0,
    mode: str = "hooks",
) -> DPTrainOutcome:
    out = train_device_dp(
        model_for(device), device, train_config(), dp_config(grad_sample_mode=mode), [],
        torch.Generator().manual_seed(torch_seed), noise_rng=noise_rng,
    )  # fmt: skip
    assert out.update is not None
    return out


@pytest.mark.parametrize("mode", ["hooks", "ghost"])
def test_device_noise_std_is_clip_times_z_times_root_steps(device: DeviceData, mode: str) -> None:
    rows = untouched(device)
    out = run(device, seeded_generator(1), mode=mode)
    assert out.update is not None
    assert out.plan.noise_multiplier == Z and out.plan.steps == 10
    # The expected batch is large, so "sum" and "mean" reductions differ 33-fold.
    assert round(out.plan.sample_rate * out.n_examples) >= 30
    noise = np.concatenate(
        [out.update[name][rows].ravel() for name in ("item_factors.weight", "item_bias.weight")]
    ).astype(np.float64)
    assert noise.size == len(rows) * (DIM + 1)  # about 3,900 coordinates: 1.1% std error
    expected = LR * CLIP * Z * math.sqrt(out.plan.steps)
    assert noise.std() == pytest.approx(expected, rel=0.05)
    assert abs(noise.mean()) < 4 * expected / math.sqrt(noise.size)


def test_noise_and_poisson_masks_come_from_noise_rng_alone(device: DeviceData) -> None:
    """Same ``noise_rng``, different torch generators (mse: no negatives, no dropout):
    the same update. Same torch generator, different ``noise_rng``: another update."""
    a = run(device, seeded_generator(2), torch_seed=0)
    b = run(device, seeded_generator(2), torch_seed=1)
    c = run(device, seeded_generator(3), torch_seed=0)
    assert a.update is not None and b.update is not None and c.update is not None
    for k in a.update:
        np.testing.assert_array_equal(a.update[k], b.update[k])
    assert not np.array_equal(a.update["item_factors.weight"], c.update["item_factors.weight"])


def test_secure_noise_differs_between_runs_that_share_every_seed(device: DeviceData) -> None:
    rows = untouched(device)
    for first, second in [(None, None), (secure_generator(), secure_generator())]:
        a, b = run(device, first), run(device, second)
        assert a.update is not None and b.update is not None
        diff = a.update["item_factors.weight"][rows] != b.update["item_factors.weight"][rows]
        assert diff.all()


def test_dense_update_under_dp_while_plain_shows_exactly_the_touched_rows(
    device: DeviceData,
) -> None:
    touched = np.unique(device.data.items[device.split.train])
    rows = untouched(device)
    slow = train_config(lr_global=0.005, lr_local=0.005)  # the summed loss diverges at LR
    plain = train_device(model_for(device), device, slow, torch.Generator())
    out = run(device, secure_generator())
    assert out.update is not None
    for name in ("item_factors.weight", "item_bias.weight"):
        nonzero = (plain.update[name] != 0).any(axis=1)
        np.testing.assert_array_equal(np.flatnonzero(nonzero), touched)
        private = out.update[name]
        assert private.shape == plain.update[name].shape
        # Every coordinate of every row moved, the never-touched rows included.
        assert (private != 0).all(), name
        assert (private[rows] != 0).all(), name


def test_negatives_follow_the_torch_generator_and_nothing_else() -> None:
    """Ranking negatives come from the caller's (secret, under DP) torch generator: the
    same generator and ``noise_rng`` give the same update, another generator another."""
    ranking = DeviceIndex(
        load_task("synthetic", task="ranking", synthetic_users=60, synthetic_items=400)
    ).device(BIG_DEVICE)
    cfg = train_config(loss="bpr", negatives=4)

    def update(torch_seed: int) -> np.ndarray:
        out = train_device_dp(
            model_for(ranking), ranking, cfg, dp_config(), [],
            torch.Generator().manual_seed(torch_seed), noise_rng=seeded_generator(7),
        )  # fmt: skip
        assert out.update is not None
        return out.update["item_factors.weight"]

    np.testing.assert_array_equal(update(0), update(0))
    assert not np.array_equal(update(0), update(1))
