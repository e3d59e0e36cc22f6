"""Interaction-level DP-SGD on one device: the privacy plan, composition over rounds,
density of the update, write-ahead accounting, empty batches, clipping and the budget."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import pld

from pollinate.client import dp_training
from pollinate.client.device_data import DeviceData, DeviceIndex
from pollinate.client.dp_training import (
    LocalDPConfig,
    default_local_delta,
    device_epsilon,
    plan_local_round,
    train_device_dp,
)
from pollinate.client.training import LocalTrainConfig, train_device
from pollinate.shared.data.splits import Split
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import RecModel, build_model
from pollinate.shared.privacy.accounting import local_epsilon
from pollinate.shared.privacy.randomness import seeded_generator
from pollinate.shared.tasks import load_task

pytestmark = pytest.mark.filterwarnings("ignore:Optimal order is the")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def rating() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    )


@pytest.fixture(scope="module")
def ranking() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="ranking", synthetic_users=60, synthetic_items=40)
    )


def dp_config(**kw: Any) -> LocalDPConfig:
    args: dict[str, Any] = {
        "clip_norm": 0.5,
        "noise_multiplier": 1.0,
        "target_epsilon": None,
        "planned_rounds": 10,
        "delta": None,
        "epsilon_budget": None,
    }
    return LocalDPConfig(**(args | kw))


def train_config(loss: str = "mse", **kw: Any) -> LocalTrainConfig:
    args: dict[str, Any] = {
        "loss": loss,
        "reg": 0.0,
        "negatives": 7,
        "epochs": 1,
        "batch_size": 8,
        "lr_global": 0.05,
        "lr_local": 0.05,
        "history_len": 5,
    }
    return LocalTrainConfig(**(args | kw))


def model_for(device: DeviceData, name: str = "mf") -> RecModel:
    extra = {"history_len": 5} if name == "interest" else {}
    return build_model(
        name,
        n_users=1,
        n_items=device.data.n_items,
        item_genres=device.data.item_genres,
        dim=4,
        global_mean=3.0 if name == "mf" else 0.0,
        generator=torch.Generator().manual_seed(0),
        **extra,
    )


def with_train_rows(device: DeviceData, k: int) -> DeviceData:
    """The device with only its first ``k`` training rows."""
    s = device.split
    return replace(device, split=Split(train=s.train[:k], valid=s.valid, test=s.test))


def continuous_epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
    """What one dp-accounting PLD accountant (replace-one, default discretisation)
    reports after composing the whole history, consecutive equal entries at once."""
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    runs: list[list[Any]] = []
    for z, q, steps in history:
        if runs and runs[-1][:2] == [z, q]:
            runs[-1][2] += steps
        else:
            runs.append([z, q, steps])
    for z, q, steps in runs:
        gaussian = dp_accounting.GaussianDpEvent(z)
        event = gaussian if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, gaussian)
        acc.compose(event, steps)
    return float(acc.get_epsilon(delta))


#: The device's PLD grid is coarser than dp-accounting's default, which only over-reports
#: (tests/shared/test_accounting_pins.py); by less than this, relative, here.
GRID = 2e-3


# --------------------------------------------------------------------------- the plan
def test_small_devices_get_rate_one_half_and_steps_cover_the_epochs() -> None:
    plan = plan_local_round(10, 32, 3, dp_config(), [])
    assert plan.sample_rate == 0.5  # not 1: Poisson amplification kept
    assert plan.steps == 3 * 2
    plan = plan_local_round(100, 32, 2, dp_config(), [])
    assert plan.sample_rate == pytest.approx(0.32)
    assert plan.steps == 2 * 4  # ceil(1 / 0.32) = 4
    assert plan.allowed and plan.epsilon_before == 0.0 and plan.epsilon_after > 0


def test_a_step_cap_shortens_the_round_and_is_what_is_accounted() -> None:
    full = plan_local_round(100, 32, 5, dp_config(), [])
    capped = plan_local_round(100, 32, 5, dp_config(), [], max_steps=6)
    assert full.steps == 5 * 4 and capped.steps == 6
    assert capped.sample_rate == full.sample_rate
    assert capped.epsilon_after == pytest.approx(
        continuous_epsilon([(1.0, capped.sample_rate, 6)], capped.delta), rel=GRID
    )
    assert capped.epsilon_after < full.epsilon_after
    # Calibrated to a target, the noise is set for the capped lifetime (fewer steps,
    # less noise for the same ε).
    target = {"noise_multiplier": None, "target_epsilon": 4.0}
    z_full = plan_local_round(100, 32, 5, dp_config(**target), []).noise_multiplier
    z_capped = plan_local_round(100, 32, 5, dp_config(**target), [], max_steps=6)
    assert z_capped.noise_multiplier < z_full
    lifetime = [(z_capped.noise_multiplier, z_capped.sample_rate, 6)] * 10  # planned_rounds
    assert continuous_epsilon(lifetime, z_capped.delta) == pytest.approx(4.0, rel=0.01)


def test_default_delta_is_below_one_over_n() -> None:
    assert default_local_delta(10) == 1e-5
    assert default_local_delta(1_000_000) == pytest.approx(1e-7)
    assert plan_local_round(1_000_000, 32, 1, dp_config(), []).delta == pytest.approx(1e-7)
    assert plan_local_round(50, 32, 1, dp_config(delta=1e-6), []).delta == 1e-6


def test_a_device_without_examples_does_not_train() -> None:
    plan = plan_local_round(0, 32, 1, dp_config(), [])
    assert not plan.allowed and plan.steps == 0


def test_calibrated_noise_spends_the_target_over_the_planned_rounds() -> None:
    dp = dp_config(noise_multiplier=None, target_epsilon=4.0, planned_rounds=20)
    plan = plan_local_round(50, 10, 1, dp, [])
    assert (plan.sample_rate, plan.steps) == (0.2, 5)
    lifetime = [(plan.noise_multiplier, plan.sample_rate, plan.steps)] * 20
    eps = continuous_epsilon(lifetime, plan.delta)
    assert 0.99 * 4.0 <= eps <= 4.0
    # Deterministic: a later round of the same device gets the same z.
    later = plan_local_round(50, 10, 1, dp, lifetime[:7])
    assert later.noise_multiplier == plan.noise_multiplier


def test_budget_refuses_the_round_that_would_exceed_it() -> None:
    one = plan_local_round(10, 32, 1, dp_config(), [])
    two = plan_local_round(10, 32, 1, dp_config(), [(1.0, 0.5, 2)])
    budget = (one.epsilon_after + two.epsilon_after) / 2
    dp = dp_config(epsilon_budget=budget)
    assert plan_local_round(10, 32, 1, dp, []).allowed
    refused = plan_local_round(10, 32, 1, dp, [(1.0, 0.5, 2)])
    assert not refused.allowed
    assert refused.epsilon_before == pytest.approx(one.epsilon_after)
    assert refused.epsilon_after > budget


def test_device_epsilon_is_the_shared_local_epsilon() -> None:
    history = [(1.0, 0.5, 2), (1.3, 0.2, 7), (1.0, 0.5, 2)]
    assert device_epsilon(history, 1e-5) == pytest.approx(local_epsilon(history, 1e-5), rel=1e-9)


def test_the_device_accounts_replace_one_with_pld_and_refuses_other_accountants() -> None:
    # z = 3.7, q = 0.5, 60 steps, δ = 1e-5: 10.46 under replace-one (the released example
    # count is public), against the 4.82 (PLD) or 5.23 (Opacus RDP) of add/remove.
    plan = plan_local_round(10, 32, 30, dp_config(noise_multiplier=3.7, delta=1e-5), [])
    assert (plan.sample_rate, plan.steps) == (0.5, 60)
    assert plan.epsilon_after == pytest.approx(continuous_epsilon([(3.7, 0.5, 60)], 1e-5), rel=GRID)
    assert plan.epsilon_after == pytest.approx(10.46, abs=0.02)
    for accountant in ("rdp", "prv"):
        with pytest.raises(ConfigError, match="replace-one"):
            dp_config(accountant=accountant)


def test_config_rejects_both_or_neither_noise_setting() -> None:
    with pytest.raises(ConfigError):
        dp_config(target_epsilon=4.0)
    with pytest.raises(ConfigError):
        dp_config(noise_multiplier=None)
    with pytest.raises(ConfigError):
        dp_config(clip_norm=0.0)


# --------------------------------------------------------------------------- composition
def test_fifty_rounds_compose_as_one_accountant(rating: DeviceIndex) -> None:
    device = with_train_rows(rating.device(3), 6)
    model = model_for(device)
    cfg, dp = train_config(), dp_config(noise_multiplier=1.5)
    history: list[tuple[float, float, int]] = []
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = train_device_dp(model, device, cfg, dp, history, gen)
        assert out.update is not None and not out.stopped
        history = out.history
    assert len(history) == 50 and len(set(history)) == 1
    z, q, steps = history[0]
    delta = out.plan.delta
    assert out.epsilon == pytest.approx(continuous_epsilon(history, delta), rel=GRID)
    # A fresh accountant per round (Flower's Opacus example) reports one round only.
    fresh = continuous_epsilon([(z, q, steps)], delta)
    assert out.epsilon > 3 * fresh


# --------------------------------------------------------------------------- the update
def test_dp_update_is_dense_while_plain_update_shows_touched_items(rating: DeviceIndex) -> None:
    device = rating.device(5)
    touched = np.unique(device.data.items[device.split.train])
    untouched = np.setdiff1d(np.arange(device.data.n_items), touched)
    assert len(untouched) > 0
    cfg = train_config()
    plain = train_device(model_for(device), device, cfg, torch.Generator().manual_seed(0))
    rows = np.abs(plain.update["item_factors.weight"]).sum(1)
    assert np.all(rows[untouched] == 0) and np.all(rows[touched] > 0)
    out = train_device_dp(
        model_for(device), device, cfg, dp_config(), [], torch.Generator().manual_seed(0)
    )
    assert out.update is not None
    for name in ("item_factors.weight", "item_bias.weight"):
        assert np.all(np.abs(out.update[name][untouched]).sum(1) > 0), name


@pytest.mark.parametrize(
    ("name", "loss", "task"),
    [("mf", "mse", "rating"), ("interest", "sampled_softmax", "ranking")],
)
def test_both_models_train_and_are_left_plain(
    name: str, loss: str, task: str, rating: DeviceIndex, ranking: DeviceIndex
) -> None:
    device = (rating if task == "rating" else ranking).device(2)
    model = model_for(device, name)
    cfg = train_config(loss, reg=0.01)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    history: list[tuple[float, float, int]] = [(1.0, 0.5, 2)]
    for _ in range(2):  # the same model object twice: hooks must not pile up
        gen = torch.Generator().manual_seed(0)  # negatives only: the noise is secure
        out = train_device_dp(model, device, cfg, dp_config(), history, gen)
        assert out.update is not None
        assert set(out.update) == set(model.global_parameter_names())
        assert all(np.isfinite(u).all() for u in out.update.values())
        assert out.peak_grad_sample_bytes > 0
        history = out.history
    assert len(history) == 3
    assert type(model) is type(model_for(device, name))
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    for p in model.parameters():
        assert not hasattr(p, "grad_sample") and not hasattr(p, "summed_grad")
        assert p.grad is None
    # The model holds the DP-trained weights, private ones included.
    params = dict(model.named_parameters())
    for k in model.local_parameter_names():
        assert not torch.equal(params[k], before[k]), k


def test_dp_sgd_wraps_adam_with_the_same_accounting(ranking: DeviceIndex) -> None:
    """The device optimizer only post-processes the clipped, noised gradient: Opacus
    wraps Adam as it wraps SGD, and the privacy plan (and so ε) is the same."""
    device = ranking.device(2)
    outcomes = {}
    for opt in ("sgd", "adam", "adam-encoder"):
        model = model_for(device, "interest")
        cfg = train_config("sampled_softmax", optimizer=opt, lr_encoder=0.01)
        gen = torch.Generator().manual_seed(0)
        outcomes[opt] = train_device_dp(model, device, cfg, dp_config(), [], gen)
    sgd, adam = outcomes["sgd"], outcomes["adam"]
    assert adam.update is not None and sgd.update is not None
    assert all(np.isfinite(u).all() for u in adam.update.values())
    assert adam.history == sgd.history and adam.epsilon == sgd.epsilon
    assert any(not np.allclose(adam.update[k], sgd.update[k]) for k in adam.update), (
        "the optimizer made no difference: the test would prove nothing"
    )
    mixed = outcomes["adam-encoder"]
    assert mixed.update is not None and all(np.isfinite(u).all() for u in mixed.update.values())
    assert mixed.history == sgd.history and mixed.epsilon == sgd.epsilon


# --------------------------------------------------------------------------- write-ahead
def test_accountant_is_handed_over_before_the_update(rating: DeviceIndex) -> None:
    device = with_train_rows(rating.device(3), 6)
    seen: list[list[tuple[float, float, int]]] = []
    old = [(1.0, 0.5, 2)]
    out = train_device_dp(
        model_for(device), device, train_config(), dp_config(), old,
        torch.Generator().manual_seed(0), before_release=seen.append,
    )  # fmt: skip
    assert seen == [out.history] and out.history[:1] == old and len(out.history) == 2

    def fail(history: list[tuple[float, float, int]]) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        train_device_dp(
            model_for(device), device, train_config(), dp_config(), old,
            torch.Generator().manual_seed(0), before_release=fail,
        )  # fmt: skip


# --------------------------------------------------------------------------- empty batches
@pytest.fixture
def batch_sizes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every non-empty batch DP-SGD draws (an empty one never calls ``take``)."""
    sizes: list[int] = []
    real_take = dp_training.take

    def counting_take(examples: Any, idx: Any) -> Any:
        sizes.append(len(idx))
        return real_take(examples, idx)

    monkeypatch.setattr(dp_training, "take", counting_take)
    return sizes


def test_empty_poisson_batches_are_noisy_steps(rating: DeviceIndex, batch_sizes: list[int]) -> None:
    device = with_train_rows(rating.device(3), 1)
    batches = batch_sizes
    model = model_for(device)
    history: list[tuple[float, float, int]] = []
    gen = torch.Generator().manual_seed(1)
    total_steps = 0
    for _ in range(5):
        before = model.global_state()
        out = train_device_dp(model, device, train_config(epochs=2), dp_config(), history, gen)
        assert out.update is not None and out.plan.sample_rate == 0.5
        assert all(np.isfinite(u).all() for u in out.update.values())
        # Noise every step, even when no example was drawn: every row moves.
        assert all(np.all(u != 0) for u in out.update.values())
        assert not np.array_equal(
            before["item_factors.weight"], model.global_state()["item_factors.weight"]
        )
        history, total_steps = out.history, total_steps + out.plan.steps
    assert batches and all(b == 1 for b in batches)
    assert len(batches) < total_steps  # some steps had an empty batch (P(none) = 2^-20)


# --------------------------------------------------------------------------- clipping
def test_each_step_moves_the_model_by_at_most_lr_times_clip(
    rating: DeviceIndex, batch_sizes: list[int]
) -> None:
    # One example, lr 1, clip C, almost no noise: a step with the example moves the whole
    # parameter vector by exactly C (its raw gradient norm is far above C), and an empty
    # step by almost nothing. Without clipping the step would be lr·‖g‖ ≫ C.
    device = with_train_rows(rating.device(3), 1)
    model = model_for(device)
    C = 1e-3
    nonempty = batch_sizes
    cfg = train_config(lr_global=1.0, lr_local=1.0, epochs=3)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    out = train_device_dp(
        model, device, cfg, dp_config(clip_norm=C, noise_multiplier=1e-3), [],
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    k = len(nonempty)
    assert 0 < k <= out.plan.steps
    moved = float((after - before).norm())
    assert k * C * 0.98 <= moved <= k * C * 1.02

    plain = train_device(model_for(device), device, cfg, torch.Generator().manual_seed(0))
    assert math.sqrt(sum(float((u**2).sum()) for u in plain.update.values())) > 100 * C


# --------------------------------------------------------------------------- the budget
def test_budget_stops_the_device_without_releasing(rating: DeviceIndex) -> None:
    device = with_train_rows(rating.device(3), 6)
    model = model_for(device)
    history = [(1.0, 0.5, 2)] * 4
    eps = device_epsilon(history, default_local_delta(6))
    called: list[object] = []
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    out = train_device_dp(
        model, device, train_config(), dp_config(epsilon_budget=eps + 0.01), history,
        torch.Generator().manual_seed(0), before_release=called.append,
    )  # fmt: skip
    assert out.stopped and out.update is None and not called
    assert out.epsilon == pytest.approx(eps) and out.history == history
    assert out.peak_grad_sample_bytes == 0
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_an_empty_device_is_not_stopped_by_the_budget(rating: DeviceIndex) -> None:
    device = with_train_rows(rating.device(3), 0)
    out = train_device_dp(
        model_for(device), device, train_config(), dp_config(), [], torch.Generator()
    )
    assert out.update is None and not out.stopped and out.epsilon == 0.0


# --------------------------------------------------------------------------- ghost clipping
@pytest.mark.parametrize(("loss", "reg"), [("mse", 0.0), ("mse", 0.01), ("bpr", 0.01)])
def test_ghost_clipping_matches_hooks_for_mf(
    rating: DeviceIndex, ranking: DeviceIndex, loss: str, reg: float
) -> None:
    """With L2 too: ``mf`` computes its penalty from the score's lookups, so each table
    is looked up once per forward pass, as ghost clipping needs."""
    device = (rating if loss == "mse" else ranking).device(5)
    updates: list[dict[str, np.ndarray]] = []
    for mode in ("hooks", "ghost"):
        out = train_device_dp(
            model_for(device), device, train_config(loss, reg=reg),
            dp_config(grad_sample_mode=mode), [], torch.Generator().manual_seed(0),
            noise_rng=seeded_generator(0),
        )  # fmt: skip
        assert out.update is not None
        updates.append(out.update)
    for k in updates[0]:
        np.testing.assert_allclose(updates[0][k], updates[1][k], atol=1e-6)


def test_ghost_clipping_refuses_a_module_called_twice(ranking: DeviceIndex) -> None:
    """``interest`` looks its item table up for the history and for the scored items."""
    device = with_train_rows(ranking.device(5), 1)  # empty batches come first, often
    model = model_for(device, "interest")
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for seed in range(4):
        with pytest.raises(ConfigError, match="item_emb"):
            train_device_dp(
                model, device, train_config("sampled_softmax"),
                dp_config(grad_sample_mode="ghost"), [], torch.Generator().manual_seed(seed),
            )  # fmt: skip
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())


def test_a_frozen_global_mean_is_neither_trained_nor_sent() -> None:
    from pollinate.client.device_data import DeviceIndex
    from pollinate.client.training import LocalTrainConfig, train_device
    from pollinate.shared.models import build_model
    from pollinate.shared.tasks import load_task

    device = DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
    ).device(2)
    model = build_model(
        "mf", n_users=1, n_items=40, dim=4, global_mean=3.0, learn_global_mean=False
    )
    assert "global_bias.weight" not in model.global_state()
    cfg = LocalTrainConfig(
        loss="mse", reg=0.01, negatives=1, epochs=1, batch_size=8,
        lr_global=0.05, lr_local=0.05, history_len=1,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(0)
    plain = train_device(model, device, cfg, gen)
    dp = train_device_dp(
        model, device, cfg,
        LocalDPConfig(clip_norm=0.5, noise_multiplier=1.0, target_epsilon=None,
                      planned_rounds=3, delta=None, epsilon_budget=None),
        [], gen,
    )  # fmt: skip
    for update in (plain.update, dp.update):
        assert update is not None and "global_bias.weight" not in update
    assert float(model.global_bias.weight) == 3.0
