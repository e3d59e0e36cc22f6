"""Local adaptation before evaluating: the device personalizes the received global model.

Federated personalization by local fine-tuning (Wang et al., 2019, "Federated evaluation
of on-device personalization"): before it scores its held-out items, a device trains a
copy of its whole local model (the global parameters it received and its private ones)
on its own training rows for a few epochs, with its training recipe at scaled-down
rates, and scores with that copy. The adapted copy is the device's own: nothing of it is
saved or sent (evaluation replies carry sums only, and the private state the device keeps
for training is the one its last training round saved), so the next round trains from
the received global model as before.

Refused under local DP (``FederationConfig``): it fits the model to raw rows without
DP-SGD, and its outcome would leave the device in the evaluation sums.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pollinate.client.device_data import DeviceData
from pollinate.client.training import LocalTrainConfig, train_device
from pollinate.shared.models.base import RecModel


@dataclass(frozen=True)
class LocalAdaptation:
    #: Local epochs over the device's training rows (at least 1).
    epochs: int
    #: Multiplies the device's three learning rates (private, item rows, encoder).
    lr_scale: float

    def __post_init__(self) -> None:
        if self.epochs < 1 or not self.lr_scale > 0:
            raise ValueError(
                f"local adaptation needs epochs >= 1 and lr_scale > 0, got {self.epochs} "
                f"and {self.lr_scale}"
            )


def adaptation_train_config(cfg: LocalTrainConfig, adapt: LocalAdaptation) -> LocalTrainConfig:
    """The device's training recipe for ``adapt.epochs`` epochs at ``adapt.lr_scale`` times
    its rates (no step cap: every row counts once per epoch)."""
    s = adapt.lr_scale
    return replace(
        cfg,
        epochs=adapt.epochs,
        max_steps=None,
        lr_global=cfg.lr_global * s,
        lr_local=cfg.lr_local * s,
        lr_encoder=None if cfg.lr_encoder is None else cfg.lr_encoder * s,
    )


def adapt_locally(
    model: RecModel,
    device: DeviceData,
    cfg: LocalTrainConfig,
    adapt: LocalAdaptation,
    generator: torch.Generator,
) -> None:
    """Train ``model`` in place on the device's training rows; its update is discarded.

    ``model`` holds the received global parameters and the device's private ones; the
    caller scores with it afterwards and must not save it as the device's state.
    """
    train_device(model, device, adaptation_train_config(cfg, adapt), generator)
