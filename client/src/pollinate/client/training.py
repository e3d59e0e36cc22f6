"""One training round on a device: local SGD over the whole local model.

The loss of a batch is the *sum* of per-example losses, so the learning rate is a
per-example step whatever the batch size (a light user is not averaged into tiny steps;
Opacus uses the same ``loss_reduction="sum"``).

The device trains its private parameters (learning rate ``lr_local``) and its copy of
the global parameters (``lr_global``; ``lr_encoder`` for an encoder's dense weights)
together (for ``mf`` with ``private_refit``, after refitting the private ones to the
received tables, :mod:`pollinate.client.personalize`), then returns only the *update*
to the global parameters. The private parameters stay on the device.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pollinate.client import mf_sgd
from pollinate.client.device_data import DeviceData
from pollinate.client.personalize import refit_private
from pollinate.shared.errors import ModelError, TrainingDivergedError
from pollinate.shared.models.base import RecModel
from pollinate.shared.models.mf import BiasedMF
from pollinate.shared.training.examples import build_examples, n_examples, take
from pollinate.shared.training.losses import get_loss


@dataclass(frozen=True)
class LocalTrainConfig:
    loss: str
    reg: float
    negatives: int
    epochs: int
    batch_size: int
    lr_global: float
    lr_local: float
    history_len: int
    #: Most optimizer steps in the round (``None``: ``epochs`` full epochs); the round
    #: ends after this many steps even inside an epoch.
    max_steps: int | None = None
    #: L2 weight of the private refit before local SGD (``None``: no refit).
    private_refit: float | None = None
    #: Rate of the global parameters every example uses (a sequence encoder's dense
    #: weights, ``RecModel.encoder_parameter_names``); ``None``: ``lr_global``.
    lr_encoder: float | None = None
    #: Largest L2 norm of the encoder's gradient in one step (``None``: no limit). A
    #: stabiliser of plain training, not a privacy clip: DP-SGD clips per example.
    encoder_max_grad_norm: float | None = None
    #: ``sgd`` or ``adam`` (fresh moments every round; the rates above are Adam's step
    #: sizes then). Adam's step does not scale with the summed loss, so the encoder and
    #: the item rows move at comparable speeds. ``adam-encoder``: Adam for the encoder's
    #: dense weights only (step ``lr_encoder``), SGD for the item rows and private vectors.
    optimizer: str = "sgd"
    #: Decay of the private parameters alone, applied by the optimizer at every step
    #: (``p -= lr_local * private_weight_decay * p``), whatever the batch holds. It bounds
    #: the private vectors, which ``reg`` (on the rows an example touches, in the loss)
    #: leaves free when it is 0. Under DP-SGD it acts on parameters that are already
    #: private, so it is post-processing and costs no ε.
    private_weight_decay: float = 0.0


@dataclass(frozen=True)
class Layout:
    """A model's parameters by name and their split (``RecModel``'s name methods, each of
    which walks the module tree): computed once per model object, which a process reuses
    for every device it plays (``pollinate.client.app``)."""

    params: dict[str, torch.nn.Parameter]
    local: tuple[str, ...]
    global_: tuple[str, ...]
    encoder: tuple[str, ...]

    def global_state(self) -> dict[str, np.ndarray]:
        """What :meth:`RecModel.global_state` returns: copies of the global parameters."""
        return {n: self.params[n].detach().numpy().copy() for n in self.global_}

    def local_state(self) -> dict[str, np.ndarray]:
        """Copies of the private parameters."""
        return {n: self.params[n].detach().numpy().copy() for n in self.local}

    def load_global(self, state: Mapping[str, np.ndarray]) -> None:
        """What :meth:`RecModel.load_global_state` does (names and shapes must match
        exactly), without walking the module tree for every device."""
        if len(state) != len(self.global_) or not set(state) == set(self.global_):
            raise ModelError(
                f"global state keys {sorted(state)} do not match the model's {sorted(self.global_)}"
            )
        for n, value in state.items():
            target = self.params[n].detach().numpy()
            if value.shape != target.shape:
                raise ModelError(
                    f"global parameter {n!r} has shape {tuple(value.shape)}, "
                    f"expected {tuple(target.shape)}"
                )
            np.copyto(target, value, casting="unsafe")


_LAYOUTS: weakref.WeakKeyDictionary[RecModel, Layout] = weakref.WeakKeyDictionary()


def layout(model: RecModel) -> Layout:
    """The model's :class:`Layout` (cached: a model's parameters and their split are fixed
    when it is built)."""
    found = _LAYOUTS.get(model)
    if found is None:
        found = _LAYOUTS[model] = Layout(
            dict(model.named_parameters()),
            model.local_parameter_names(),
            model.global_parameter_names(),
            model.encoder_parameter_names(),
        )
    return found


def sgd_groups(model: RecModel, cfg: LocalTrainConfig) -> list[dict[str, object]]:
    """SGD parameter groups: private parameters at ``lr_local`` (with their own decay
    ``private_weight_decay``), the encoder's dense weights at ``lr_encoder`` and the other
    global parameters (item rows) at ``lr_global``.

    The loss is summed over the batch, so a weight that every example touches takes
    batch-size times the per-example step, while an item row takes one per occurrence:
    the two may need different rates.
    """
    lay = layout(model)
    params, local = lay.params, lay.local
    encoder = set(lay.encoder) if cfg.lr_encoder is not None else set()
    rows = [k for k in lay.global_ if k not in encoder]
    groups: list[dict[str, object]] = [
        {
            "params": [params[k] for k in local],
            "lr": cfg.lr_local,
            "weight_decay": cfg.private_weight_decay,
        },
        {"params": [params[k] for k in rows], "lr": cfg.lr_global},
    ]
    if encoder:
        groups.append({"params": [params[k] for k in sorted(encoder)], "lr": cfg.lr_encoder})
    return groups


class EncoderAdam(torch.optim.Adam):
    """Adam on the groups marked ``adam``, plain SGD (``p -= lr * (g + wd * p)``) on the rest.

    Dense weights that every example touches get Adam's bounded, per-coordinate steps;
    embedding rows keep the per-occurrence SGD step of the summed loss. One optimizer, so
    Opacus can wrap it like any other (it sets ``p.grad`` and calls :meth:`step`).
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        if closure is not None:
            raise ValueError("EncoderAdam does not take a closure")
        for group in self.param_groups:
            if group["adam"]:
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(p.grad, alpha=-group["lr"])
                p.grad = None  # Adam's step below skips parameters without a gradient
        return super().step()


class PlainSGD(torch.optim.SGD):
    """``torch.optim.SGD`` without momentum, its step reduced to its arithmetic.

    torch's SGD step gathers the groups' gradients, dispatches between implementations
    and tracks momentum buffers on every call: for an ``mf`` device's few tiny steps that
    bookkeeping costs more than the update. This step is torch's own arithmetic,
    operation for operation (``_single_tensor_sgd``: ``g = g + wd * p``, then
    ``p -= lr * g``), so the parameters are bit for bit those of ``torch.optim.SGD``
    (pinned by a test). It stays a ``torch.optim.Optimizer``: Opacus wraps it, and step
    hooks run as on any optimizer.
    """

    def __init__(self, groups: Sequence[dict[str, Any]]) -> None:
        super().__init__(groups)
        for group in self.param_groups:
            if group["momentum"] or group["nesterov"] or group["maximize"]:
                raise ValueError("PlainSGD is SGD without momentum, nesterov or maximize")

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:  # type: ignore[override]
        if closure is not None:
            raise ValueError("PlainSGD does not take a closure")
        for group in self.param_groups:
            lr, decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                if decay != 0:
                    grad = grad.add(p, alpha=decay)
                p.add_(grad, alpha=-lr)


def local_optimizer(model: RecModel, cfg: LocalTrainConfig) -> torch.optim.Optimizer:
    """The device's optimizer over :func:`sgd_groups` (a fresh one every round: nothing of
    it outlives the round, so it holds no state to persist or leak)."""
    groups = sgd_groups(model, cfg)
    if cfg.optimizer == "sgd":
        return PlainSGD(groups)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups)
    if cfg.optimizer == "adam-encoder":
        if len(groups) < 3:
            raise ValueError("device optimizer 'adam-encoder' needs an encoder and lr_encoder")
        for i, group in enumerate(groups):
            group["adam"] = i == 2
            group.setdefault("weight_decay", 0.0)
        return EncoderAdam(groups)
    raise ValueError(
        f"unknown device optimizer {cfg.optimizer!r}; use 'sgd', 'adam' or 'adam-encoder'"
    )


@contextmanager
def seeded_global_rng(generator: torch.Generator) -> Iterator[None]:
    """Seed torch's global RNG from the device's generator for one round of training.

    Dropout draws its masks from the global RNG, which torch seeds at random in every
    process: without this, an ``interest`` run (in process or on Flower, where a device
    may train in any worker) was not reproducible from its seed, and a resumed run could
    not equal an uninterrupted one. The previous global state is restored afterwards.

    The masks are exactly as secret as ``generator``: under local DP the device passes one
    seeded from its CSPRNG (``pollinate.shared.privacy.randomness.secret_torch_generator``),
    so that nobody who knows the run seed can recompute them. Local DP noise and Poisson
    masks never come from here: they have their own generator.
    """
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with seeded_cpu_rng(seed):
        yield


@contextmanager
def seeded_cpu_rng(seed: int) -> Iterator[None]:
    """Torch's global CPU generator seeded with ``seed`` inside the block, restored after.

    What ``torch.random.fork_rng(devices=[])`` + ``torch.manual_seed`` do for a CPU model,
    without ``manual_seed``'s lazy seeding of every accelerator backend, which formats a
    stack trace on each call (0.7 ms, the largest single cost of an ``mf`` device step).
    """
    state = torch.default_generator.get_state()
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        torch.default_generator.set_state(state)


def local_steps(n: int, batch_size: int, epochs: int, max_steps: int | None) -> int:
    """Optimizer steps of a round: ``epochs`` passes of ``⌈n / batch_size⌉`` batches,
    at most ``max_steps``."""
    full = epochs * math.ceil(n / batch_size) if n > 0 else 0
    return full if max_steps is None else min(full, max_steps)


@dataclass(frozen=True)
class TrainOutcome:
    update: dict[str, np.ndarray]
    loss: float
    n_examples: int
    seconds: float


def train_device(
    model: RecModel, device: DeviceData, cfg: LocalTrainConfig, generator: torch.Generator
) -> TrainOutcome:
    """Train ``model`` on the device's training rows; return the global-parameter update."""
    t0 = time.perf_counter()
    if cfg.private_refit is not None:
        refit_private(model, device, cfg.private_refit)
    lay = layout(model)
    n = len(device.split.train)
    steps = local_steps(n, cfg.batch_size, cfg.epochs, cfg.max_steps)
    if isinstance(model, BiasedMF) and mf_sgd.applies(model, device, cfg):
        # The same steps as autograd_steps, without building a graph per step.
        update, total, count = mf_sgd.train_steps(model, device, cfg, generator, steps,
                                                  lay.global_)  # fmt: skip
    else:
        update, total, count = autograd_steps(model, device, cfg, generator, steps)
    check_finite(model, update)
    return TrainOutcome(update, total / max(count, 1), n, time.perf_counter() - t0)


def autograd_steps(
    model: RecModel,
    device: DeviceData,
    cfg: LocalTrainConfig,
    generator: torch.Generator,
    steps: int,
) -> tuple[dict[str, np.ndarray], float, int]:
    """Take ``steps`` optimizer steps through torch's autograd (any model, loss and
    optimizer); return the global-parameter update, the summed loss and its examples."""
    lay = layout(model)
    before = lay.global_state()
    examples = build_examples(
        device.data, device.split.train, history_len=getattr(model, "history_len", cfg.history_len)
    )
    n = n_examples(examples)
    loss_fn = get_loss(cfg.loss, reg=cfg.reg, n_negatives=cfg.negatives)
    opt = local_optimizer(model, cfg)
    encoder = [lay.params[k] for k in lay.encoder]
    model.train()
    total, count = 0.0, 0
    steps_left = steps
    with seeded_global_rng(generator):
        for _ in range(cfg.epochs):
            if steps_left == 0:
                break
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, cfg.batch_size):
                if steps_left == 0:
                    break
                steps_left -= 1
                batch = take(examples, order[start : start + cfg.batch_size])
                losses = loss_fn(model, batch, generator)
                opt.zero_grad(set_to_none=True)
                losses.sum().backward()
                if cfg.encoder_max_grad_norm is not None and encoder:
                    torch.nn.utils.clip_grad_norm_(encoder, cfg.encoder_max_grad_norm)
                opt.step()
                total += float(losses.detach().sum())
                count += len(losses)
    after = lay.global_state()
    return {k: after[k] - before[k] for k in before}, total, count


def check_finite(model: RecModel, update: dict[str, np.ndarray]) -> None:
    """Raise before anything is saved or sent if training diverged (NaN or inf).

    The caller then keeps the device's private state of the previous round: a diverged
    round must not poison the device's later rounds, nor reach the server.
    """
    lay = layout(model)
    bad = [k for k, v in update.items() if not np.isfinite(v).all()]
    bad += [k for k in lay.local if not np.isfinite(lay.params[k].detach().numpy()).all()]
    if bad:
        raise TrainingDivergedError(
            f"local training diverged: non-finite values in {', '.join(sorted(bad))}; "
            "nothing of this round was kept. Lower --lr-global/--lr-local/--lr-encoder (the "
            "loss is a sum over the batch, so shared weights such as the interest encoder take "
            "batch-size times the per-example step)"
        )
