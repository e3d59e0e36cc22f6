"""Local adaptation before evaluating: the recipe it trains with, that it fits the device's
own rows, and where it is refused (the ClientApp side: test_client_app.py)."""

from __future__ import annotations

import pytest
import torch

from pollinate.client.adaptation import LocalAdaptation, adapt_locally, adaptation_train_config
from pollinate.client.device_data import DeviceIndex
from pollinate.client.training import LocalTrainConfig
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import build_model
from pollinate.shared.tasks import load_task
from pollinate.shared.training.examples import build_examples
from pollinate.shared.training.losses import get_loss


def test_the_adaptation_trains_the_device_recipe_at_scaled_rates() -> None:
    cfg = LocalTrainConfig(
        "softmax", 0.0, 7, 5, 32, 0.01, 0.05, 20, max_steps=10, lr_encoder=0.0025
    )
    out = adaptation_train_config(cfg, LocalAdaptation(epochs=2, lr_scale=0.5))
    assert (out.epochs, out.max_steps) == (2, None)
    assert (out.lr_global, out.lr_local, out.lr_encoder) == (0.005, 0.025, 0.00125)
    assert (out.loss, out.batch_size, out.negatives) == ("softmax", 32, 7)
    no_encoder = adaptation_train_config(
        LocalTrainConfig("mse", 0.05, 1, 1, 32, 0.01, 0.005, 20), LocalAdaptation(1, 0.1)
    )
    assert no_encoder.lr_encoder is None
    for bad in ((0, 0.5), (1, 0.0), (1, float("nan"))):
        with pytest.raises(ValueError, match="local adaptation"):
            LocalAdaptation(*bad)


def test_adapting_lowers_the_devices_own_training_loss() -> None:
    index = DeviceIndex(load_task("synthetic", task="ranking", synthetic_users=60,
                                  synthetic_items=40))  # fmt: skip
    device = index.device(5)
    model = build_model(
        "interest", n_users=1, n_items=device.data.n_items, item_genres=device.data.item_genres,
        dim=4, history_len=5, dropout=0.0, generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    examples = build_examples(device.data, device.split.train, history_len=5)
    loss_fn = get_loss("softmax", reg=0.0, n_negatives=7)

    def training_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model, examples, torch.Generator().manual_seed(1)).mean())

    before = training_loss()
    cfg = LocalTrainConfig("softmax", 0.0, 7, 5, 8, 0.05, 0.05, 5)
    adapt_locally(model, device, cfg, LocalAdaptation(3, 1.0), torch.Generator().manual_seed(0))
    assert training_loss() < 0.9 * before


def test_the_adaptation_is_refused_under_local_dp_only() -> None:
    dp = {"dp": "local", "local-noise": 1.0, "task": "ranking", "adapt-epochs": 1}
    with pytest.raises(ConfigError, match="adapt-epochs"):
        FederationConfig.from_mapping(dp)
    user = {"dp": "user", "user-noise": 1.0, "adapt-epochs": 1}
    assert FederationConfig.from_mapping(user).adapt_epochs == 1
    assert FederationConfig.from_mapping({}).adapt_epochs == 0
    with pytest.raises(ConfigError, match="adapt"):
        FederationConfig.from_mapping({"adapt-epochs": -1})
