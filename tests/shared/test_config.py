from __future__ import annotations

import pytest

from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError


def test_dashed_and_underscored_keys_are_the_same_setting() -> None:
    a = FederationConfig.from_mapping({"sample-rate": 0.5, "local_epochs": 2})
    assert a.sample_rate == 0.5 and a.local_epochs == 2
    assert a.to_flat()["sample-rate"] == 0.5


def test_unknown_keys_are_rejected_with_the_known_ones_listed() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown configuration keys \['sample-rat'\].*sample-rate"
    ):
        FederationConfig.from_mapping({"sample-rat": 0.5})


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"sample-rate": 0.0}, "sample-rate"),
        ({"sample-rate": 1.5}, "sample-rate"),
        ({"rounds": 0}, "rounds"),
        ({"fold": 5}, "fold"),
        ({"model": "svd"}, "model"),
        ({"model": "interest", "task": "rating"}, "ranks items"),
        ({"task": "ranking", "loss": "mse"}, "does not fit"),
        ({"lr-encoder": 0.01}, "lr-encoder sets the rate of the interest model's encoder"),
        ({"task": "ranking", "model": "interest", "lr-encoder": 0}, "lr-encoder"),
        ({"encoder-max-grad-norm": 1.0}, "limits the interest encoder's step"),
        ({"device-optimizer": "lion"}, "device-optimizer"),
        ({"train-on-validation": True}, "set --eval-every 0"),
        (
            {
                "task": "ranking",
                "model": "interest",
                "encoder-max-grad-norm": 1.0,
                "dp": "local",
                "local-noise": 1.0,
            },
            "use --dp user with --model interest",
        ),
        ({"local-accountant": "rdp"}, "only dp-accounting's PLD"),
        ({"dp": "local", "local-noise": 0.2}, "below 0.3, where the replace-one PLD"),
        ({"local-evaluation": "raw"}, "local-evaluation"),
        ({"local-eval-noise": 0}, "local-eval-noise"),
    ],
)
def test_bad_values_say_what_is_wrong(values: dict[str, object], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        FederationConfig.from_mapping(values)


def test_defaults_follow_the_task_and_model() -> None:
    assert FederationConfig().loss == "mse"
    ranking = FederationConfig.from_mapping({"task": "ranking", "model": "interest"})
    assert ranking.loss == "softmax"
    assert (ranking.lr_local, ranking.lr_global, ranking.local_epochs) == (0.05, 0.01, 5)
    assert (ranking.embedding_dim, ranking.lr_encoder) == (64, 0.0025)
    assert FederationConfig().embedding_dim == 16 and FederationConfig().lr_encoder is None
    assert FederationConfig.from_mapping({"task": "ranking"}).embedding_dim == 16
    narrow = FederationConfig.from_mapping(
        {"task": "ranking", "model": "interest", "embedding-dim": 16, "lr-encoder": 0.01}
    )
    assert (narrow.embedding_dim, narrow.lr_encoder) == (16, 0.01)  # set values win
    assert ranking.weight_decay == 0.0 and FederationConfig().weight_decay == 0.05
    assert FederationConfig.from_mapping({"task": "ranking"}).weight_decay == 0.05
    kept = FederationConfig.from_mapping(
        {"task": "ranking", "model": "interest", "weight-decay": 0.1}
    )
    assert kept.weight_decay == 0.1
    assert FederationConfig().local_epochs == 1
    assert ranking.effective_server_lr == 0.03
    rating = FederationConfig()
    assert (rating.lr_local, rating.lr_global) == (0.005, 0.01)
    mf_ranking = FederationConfig.from_mapping({"task": "ranking", "lr-global": 0.2})
    assert (mf_ranking.lr_local, mf_ranking.lr_global) == (0.05, 0.2)  # a set value wins
    local = FederationConfig.from_mapping({"task": "ranking", "dp": "local", "local-noise": 1.0})
    assert local.loss == "sampled_softmax"  # one Opacus can clip per example
    assert FederationConfig.from_mapping(local.to_flat()) == local  # config.json round-trips
    assert FederationConfig.from_mapping({"server-lr": 2.0}).effective_server_lr == 2.0


def test_the_private_refit_is_on_for_mf_ratings_and_refused_where_it_does_not_belong() -> None:
    assert FederationConfig().private_refit is True
    assert FederationConfig.from_mapping({"dp": "user", "user-noise": 1.0}).private_refit
    assert not FederationConfig.from_mapping({"task": "ranking"}).private_refit
    assert not FederationConfig.from_mapping({"dp": "local", "local-noise": 1.0}).private_refit
    assert not FederationConfig.from_mapping({"private-refit": False}).private_refit
    with pytest.raises(ConfigError, match="outside the local"):
        FederationConfig.from_mapping({"dp": "both", "local-noise": 1.0, "user-noise": 1.0,
                                       "private-refit": True})  # fmt: skip
    ranked = FederationConfig.from_mapping({"task": "ranking", "private-refit": True})
    assert ranked.private_refit and ranked.loss == "softmax"
    with pytest.raises(ConfigError, match="full-softmax objective, not 'bpr'"):
        FederationConfig.from_mapping({"task": "ranking", "loss": "bpr", "private-refit": True})
    with pytest.raises(ConfigError, match="defined for --model mf"):
        FederationConfig.from_mapping(
            {"task": "ranking", "model": "interest", "private-refit": True}
        )


def test_dropout_and_adam_encoder_are_interest_settings() -> None:
    interest = {"task": "ranking", "model": "interest"}
    assert FederationConfig.from_mapping(interest).dropout is None
    assert FederationConfig.from_mapping(interest | {"dropout": 0.3}).dropout == 0.3
    with pytest.raises(ConfigError, match="no encoder"):
        FederationConfig.from_mapping({"task": "ranking", "dropout": 0.3})
    with pytest.raises(ConfigError, match="dropout"):
        FederationConfig.from_mapping(interest | {"dropout": 1.0})
    # The interest defaults set lr-encoder, so adam-encoder works out of the box ...
    mixed = FederationConfig.from_mapping(interest | {"device-optimizer": "adam-encoder"})
    assert mixed.device_optimizer == "adam-encoder" and mixed.lr_encoder is not None
    # ... and mf, which has no encoder, is refused.
    with pytest.raises(ConfigError, match="adam-encoder"):
        FederationConfig.from_mapping({"task": "ranking", "device-optimizer": "adam-encoder"})


@pytest.mark.parametrize("dp", ["local", "both"])
def test_interest_is_refused_under_local_dp_with_the_reason(dp: str) -> None:
    interest = {"task": "ranking", "model": "interest", "history-len": 5}
    with pytest.raises(ConfigError, match=r"up to history_len \+ 1 = 6 examples.*--dp user"):
        FederationConfig.from_mapping(interest | {"dp": dp, "local-noise": 1.0, "user-noise": 1.0})
    assert FederationConfig.from_mapping(interest | {"dp": "user", "user-noise": 1.0}).user_dp


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_local_accountants_other_than_pld_are_refused_with_the_reason(accountant: str) -> None:
    with pytest.raises(ConfigError, match=r"replace-one neighbouring relation.*add/remove only"):
        FederationConfig.from_mapping(
            {"dp": "local", "local-noise": 1.0, "local-accountant": accountant}
        )
    assert FederationConfig().local_accountant == "pld"


def test_the_device_evaluation_policy_defaults_to_refusing() -> None:
    cfg = FederationConfig()
    assert (cfg.local_evaluation, cfg.local_eval_noise) == ("refuse", 10.0)
    noised = FederationConfig.from_mapping({"local-evaluation": "noised", "local-eval-noise": 4})
    assert (noised.local_evaluation, noised.local_eval_noise) == ("noised", 4.0)


def test_full_softmax_is_refused_under_local_dp_only() -> None:
    ok = FederationConfig.from_mapping({"task": "ranking", "loss": "softmax"})
    assert ok.loss == "softmax"
    with pytest.raises(ConfigError, match="cannot be clipped per example"):
        FederationConfig.from_mapping(
            {"task": "ranking", "loss": "softmax", "dp": "local", "local-noise": 1.0}
        )


def test_the_flwr_run_config_in_pyproject_is_a_valid_federation_config() -> None:
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    keys = tomllib.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    cfg = FederationConfig.from_mapping(keys)  # unknown keys would raise
    assert cfg.task == keys["task"] and cfg.model == keys["model"]
    assert cfg.local_epochs == 1 and cfg.private_refit  # filled by task, as on the CLI
