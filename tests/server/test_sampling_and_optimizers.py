from __future__ import annotations

import numpy as np
import pytest

from pollinate.server.aggregate import UpdateSum
from pollinate.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from pollinate.server.federation import server_optimizer
from pollinate.server.optimizers import FedAdagrad, FedAdam, FedAvg, make_server_optimizer
from pollinate.server.sampling import poisson_sample
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.shared.tasks import Catalog


def test_poisson_sample_has_the_right_mean_and_variance() -> None:
    rng = np.random.default_rng(1)
    nodes = list(range(1000))
    sizes = np.array([len(poisson_sample(nodes, 0.05, rng)) for _ in range(400)])
    # Binomial(1000, 0.05): mean 50, sd sqrt(47.5) = 6.9; the mean of 400 draws has sd 0.34.
    assert abs(sizes.mean() - 50) < 1.5
    assert 5.5 < sizes.std() < 8.5
    assert len(set(map(tuple, [poisson_sample(nodes, 0.05, rng) for _ in range(5)]))) == 5


def test_poisson_sample_can_be_empty_and_is_reproducible() -> None:
    rng = np.random.default_rng(0)
    sizes = [len(poisson_sample(list(range(10)), 0.01, rng)) for _ in range(200)]
    assert 0 in sizes  # P(empty) = 0.99**10 = 0.90
    a = poisson_sample(list(range(50)), 0.3, np.random.default_rng(7))
    b = poisson_sample(list(range(50)), 0.3, np.random.default_rng(7))
    assert a == b


def test_poisson_sample_rejects_bad_rates() -> None:
    with pytest.raises(ConfigError):
        poisson_sample([1, 2], 0.0, np.random.default_rng())
    with pytest.raises(ConfigError):
        poisson_sample([1, 2], 1.5, np.random.default_rng())


def test_the_mean_weights_devices_equally() -> None:
    total = UpdateSum({"w": ((2,), "float64")})
    for upd in ({"w": np.array([1.0, 0.0])}, {"w": np.array([3.0, 2.0])}):
        total.add(upd)
    np.testing.assert_allclose(total.mean()["w"], [2.0, 1.0])
    with pytest.raises(ValueError):
        UpdateSum({"w": ((2,), "float64")}).mean()


def test_a_weighted_mean_is_numpys_weighted_average() -> None:
    rng = np.random.default_rng(0)
    updates = rng.normal(size=(5, 3)).astype(np.float32)
    weights = np.array([1.0, 7.0, 2.0, 30.0, 4.0])
    total = UpdateSum({"w": ((3,), "float32")})
    for u, w in zip(updates, weights, strict=True):
        total.add({"w": u}, weight=float(w))
    expected = np.average(updates.astype(np.float64), axis=0, weights=weights)
    np.testing.assert_allclose(total.mean()["w"], expected, rtol=1e-6)
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight"):
            total.add({"w": updates[0]}, weight=bad)


def test_the_running_sum_accumulates_in_float64_and_returns_the_spec_dtype() -> None:
    total = UpdateSum({"w": ((1,), "float32")})
    total.add({"w": np.array([1e4], dtype=np.float32)})
    for _ in range(10_000):
        total.add({"w": np.array([1e-4], dtype=np.float32)})
    # In float32, 1e4 + 1e-4 == 1e4: a float32 sum would lose all 10,000 small updates
    # (mean 0.99990 instead of 1.00000).
    expected = (1e4 + 10_000 * np.float64(np.float32(1e-4))) / 10_001
    mean = total.mean()["w"]
    assert mean.dtype == np.float32 and total.count == 10_001
    assert mean[0] == pytest.approx(expected, rel=1e-6)
    with pytest.raises(ValueError):
        UpdateSum({"w": ((1,), "float32")}).mean()


def test_fedavg_scales_the_mean_update() -> None:
    out = FedAvg(lr=10.0).step({"w": np.array([1.0])}, {"w": np.array([0.5])})
    np.testing.assert_allclose(out["w"], [6.0])


def test_fedadagrad_matches_a_hand_computation() -> None:
    opt = FedAdagrad(lr=0.1, tau=1e-3)
    x = {"w": np.array([0.0, 0.0])}
    d = {"w": np.array([1.0, -2.0])}
    x = opt.step(x, d)
    # m = d (beta1 = 0); v = tau^2 + d^2; x = 0.1 * d / (sqrt(v) + tau)
    v = 1e-6 + np.array([1.0, 4.0])
    np.testing.assert_allclose(x["w"], 0.1 * np.array([1.0, -2.0]) / (np.sqrt(v) + 1e-3))


def test_tau_damps_small_mean_updates_and_reaches_the_optimizer_from_the_config() -> None:
    # A coordinate whose mean update is small against tau moves far less than lr in the
    # first round: d = 2.7e-4 (ML-100K's rarest items) moves 0.13 lr at tau = 1e-3 and
    # 0.96 lr at tau = 1e-5; d = 1.3e-3 (the most popular) 0.49 lr and 0.99 lr.
    d = {"w": np.array([2.7e-4, 1.3e-3])}
    expected = {1e-3: [0.1326, 0.4924], 1e-5: [0.9636, 0.9923]}
    for tau, share in expected.items():
        step = make_server_optimizer("fedadagrad", 0.03, tau).step({"w": np.zeros(2)}, d)["w"]
        v = tau**2 + d["w"] ** 2
        np.testing.assert_allclose(step, 0.03 * d["w"] / (np.sqrt(v) + tau))
        np.testing.assert_allclose(step / 0.03, share, rtol=1e-3)
    adam = make_server_optimizer("fedadam", 0.01, 1e-4)
    assert isinstance(adam, FedAdam) and adam.tau == 1e-4
    assert FederationConfig.from_mapping({"server-tau": 1e-5}).server_tau == 1e-5
    assert FederationConfig.from_mapping({}).server_tau == 1e-3
    with pytest.raises(ConfigError, match=r"server.tau"):
        FederationConfig.from_mapping({"server-tau": 0})


def test_an_array_with_its_own_rate_steps_at_it_and_the_others_at_the_shared_rate() -> None:
    x = {"enc": np.array([0.0]), "rows": np.array([0.0, 0.0])}
    d = {"enc": np.array([0.5]), "rows": np.array([1.0, -2.0])}
    out = FedAvg(lr=1.0, lr_by_array={"enc": 3.0}).step(x, d)
    np.testing.assert_allclose(out["enc"], [1.5])
    np.testing.assert_allclose(out["rows"], [1.0, -2.0])
    for name in ("fedadagrad", "fedadam"):
        split = make_server_optimizer(name, 0.03, 1e-3, lr_by_array={"enc": 0.09})
        enc_only = make_server_optimizer(name, 0.09, 1e-3)
        one = make_server_optimizer(name, 0.03, 1e-3)
        a, b, c = dict(x), dict(x), dict(x)
        for _ in range(3):  # the moments are per array: only the rate differs
            a, b, c = split.step(a, d), enc_only.step(b, d), one.step(c, d)
        np.testing.assert_allclose(a["enc"], b["enc"])
        np.testing.assert_allclose(a["rows"], c["rows"])
        assert not np.allclose(a["enc"], c["enc"])
    with pytest.raises(ConfigError, match="positive"):
        FedAvg(lr=1.0, lr_by_array={"enc": 0.0})


def test_the_encoder_rate_reaches_the_interest_encoder_arrays_only() -> None:
    cfg = FederationConfig.from_mapping(
        {"model": "interest", "task": "ranking", "server-lr-encoder": 0.1}
    )
    catalog = Catalog(30, np.eye(30, 4), None)
    opt = server_optimizer(cfg, catalog)
    assert opt.lr == cfg.effective_server_lr and set(opt.lr_by_array.values()) == {0.1}
    enc = set(opt.lr_by_array)
    assert any(n.startswith("blocks") for n in enc) and "out_norm.weight" in enc
    assert not enc & {"item_emb.weight", "item_bias.weight", "global_bias.weight"}
    assert not enc & {"user_interest.weight", "user_bias.weight"}
    plain_cfg = FederationConfig.from_mapping({"model": "interest", "task": "ranking"})
    plain = server_optimizer(plain_cfg, catalog)
    assert plain.lr_by_array == {}
    with pytest.raises(ConfigError, match="server-lr-encoder"):
        FederationConfig.from_mapping({"model": "mf", "server-lr-encoder": 0.1})


def test_fedadam_state_round_trips() -> None:
    a, b = FedAdam(lr=0.01), FedAdam(lr=0.01)
    x = {"w": np.ones(3)}
    for step in range(3):
        x = a.step(x, {"w": np.full(3, 0.1 * (step + 1))})
    b.load_state_dict(a.state_dict())
    d = {"w": np.array([0.3, -0.1, 0.2])}
    np.testing.assert_allclose(a.step(x, d)["w"], b.step(x, d)["w"])


def test_unknown_optimizer_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="fedavg"):
        make_server_optimizer("sgd", 1.0)


def test_checkpoint_round_trips_atomically(tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(3)
    rng.random(5)
    ck = Checkpoint(
        4, {"w": np.arange(3.0)}, {"m/w": np.ones(3)}, rng.bit_generator.state, {"h": [1]}
    )
    save_checkpoint(tmp_path, ck)
    back = load_checkpoint(tmp_path)
    assert back.round == 4 and back.extra == {"h": [1]}
    np.testing.assert_array_equal(back.params["w"], ck.params["w"])
    restored = np.random.default_rng()
    restored.bit_generator.state = back.rng_state
    assert restored.random() == rng.random()
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(CheckpointError, match="--resume"):
        load_checkpoint(tmp_path / "nowhere")
