"""Interaction-level DP-SGD on one device: the DP twin of ``train_device``.

Unit of privacy: **one interaction** (one training example) of the device's user. Every
round the device runs Opacus DP-SGD over its *whole* local model (private user
parameters included): each step Poisson-samples the device's own examples at rate ``q``,
clips every example's gradient to norm ``C`` and adds Gaussian noise ``z·C`` to *every*
parameter. Rows of the item table that the user never touched get noise too, so the
global update is dense and no longer reveals which items the user trained on.

Two halves, kept apart:

* **privacy math** (pure, no torch): :func:`default_local_delta`,
  :func:`plan_local_round`. A round is planned from the device's accountant history
  ``[(noise_multiplier, sample_rate, steps), ...]``, which the caller restores from the
  device's state; ε is always that of the *whole* history (one continuous accountant,
  :func:`~pollinate.shared.privacy.accounting.local_epsilon`). A fresh ``PrivacyEngine``
  per round, as in Flower's Opacus example, reports the ε of one round only.
  Neighbours are **replace one**: the device releases its example count n (and q,
  steps and δ derived from it), so ε is that of one interaction changed in a dataset of
  public size, accounted with dp-accounting's PLD accountant under ``REPLACE_ONE``
  (sensitivity 2C; Opacus's RDP/PRV accountants assume add/remove and are not used).
  An evaluation release of the device is a plain Gaussian and enters the same history
  as ``(z_e, 1.0, 1)``.
* **the training loop**: :func:`train_device_dp`.

Choices, and why:

* ``GradSampleModule`` + ``DPOptimizer`` directly, not ``PrivacyEngine``. The engine
  owns an accountant per instance (the per-round-reset trap above), wants a
  ``DataLoader`` to make private, and its secure mode needs ``torchcsprng``, which is
  archived and has no wheels for torch 2.x. Here accounting is the persisted history and
  sampling is a Bernoulli mask over the device's in-memory examples, so the engine would
  only add state to throw away.
* ``loss_reduction="sum"`` (``losses.sum().backward()``): the learning rate is a
  per-example step and the noise std on the summed gradient is ``z·C`` whatever the
  batch size. With Opacus's default "mean" a light user, whose expected batch is 2–3,
  injects tens of times more noise per coordinate (docs/CALIBRATION).
* Sample rate ``q = min(B, n/2) / n``, i.e. capped at 0.5. A device with fewer than
  ``2B`` examples would otherwise get ``q = 1``: the full batch every step, one step per
  epoch, and no amplification by subsampling (the plain Gaussian mechanism). At a given
  z the capped rate spends less ε over a device's lifetime (z = 1, 50 rounds of one
  epoch, δ = 1e-5: ε = 43 at q = 0.5 against 57 at q = 1), and a tiny device takes two
  optimizer steps per epoch instead of one. It is not free: at a fixed ε *target* the
  calibrated noise per epoch, z/√q, comes out 2–15% above the full batch's (ε = 8 over
  30 rounds: 3.7 against 3.5), since for the Gaussian mechanism subsampling mostly
  trades steps for noise. ``steps = epochs·⌈1/q⌉`` covers every example ``epochs``
  times in expectation; ``--max-local-steps`` caps it, and the cap is what is accounted.
* Poisson sampling gives empty batches (often, on a device with a handful of
  examples). An empty batch is still a DP step: it is accounted, and the optimizer adds
  the same noise to a zero clipped sum. No forward pass is run for it; its per-example
  gradients are empty tensors.
* Noise randomness. The noise and the Poisson masks are drawn from ``noise_rng``, a
  numpy ``Generator`` over ChaCha20 (:mod:`pollinate.shared.privacy.randomness`): a
  CSPRNG keyed from ``os.urandom`` on a real device (the default when none is given), a
  seeded one only in simulations. Opacus's optimizer is subclassed so that its
  ``add_noise`` draws :func:`~pollinate.shared.privacy.randomness.gaussian` (four
  Gaussians summed and halved, the floating-point mitigation of arXiv:2107.10138 that
  Opacus's ``secure_mode`` applies) from that stream instead of torch's Mersenne
  Twister; ``torchcsprng``, which Opacus's secure mode wants, is archived. The torch
  ``generator`` draws what must be secret but is not the noise of record: negative items
  of ranking losses and (through the global RNG) dropout masks; the caller passes a
  generator seeded secretly from the device's CSPRNG
  (:func:`~pollinate.shared.privacy.randomness.secret_torch_generator`).
* Noise calibration (``target_epsilon``): once for the device's lifetime of
  ``planned_rounds`` rounds of ``steps`` steps at its ``q``, by a deterministic search
  over the same replace-one PLD accountant (:func:`calibrate_local_noise`), so every
  round gets the same ``z`` and the lifetime ε is the target. The device is assumed to
  train every round; if it trains less often its ε is lower. Evaluation releases are
  not in the plan: each one adds to the lifetime ε (the budget still holds).

Per-example gradient memory (``peak_grad_sample_bytes``). With ``grad_sample_mode=
"hooks"`` Opacus materialises a *dense* per-example gradient of every embedding table:
``B × n_items × dim`` floats for the item table, e.g. 32 × 10,000 × 16 × 4 B ≈ 20 MB per
step. Ghost clipping (``grad_sample_mode="ghost"``, Opacus's
``GradSampleModuleFastGradientClipping``) computes per-example norms without them and
clips with a second backward pass. Findings with these models and losses (Opacus 1.6.0):

* it works for ``mf`` with the ``mse``, ``bpr`` and ``sampled_softmax`` losses, with or
  without ``reg``: each embedding is called once per forward (the L2 penalty reuses the
  score's lookups, ``BiasedMF.score_and_penalty``), and Opacus's embedding norm sampler
  handles repeated indices within one example;
* it does **not** work when a module is called twice in one forward pass, which Opacus
  rejects ("Parameter tying is not supported with Ghost Clipping"): ``interest`` (its
  item embedding and genre projection serve both the history and the scored items). A
  probe forward pass finds such configurations and raises
  :class:`~pollinate.shared.errors.ConfigError` before any step is taken. Supporting it
  would need the interest model to look history and candidates up in one call.

Hooks remain the default (ghost takes two backward passes, and on ML-100K's small item
table it is no faster); ghost is offered for ``mf``. The shared lookups also halve the
hooks' work under ``reg``: one per-example gradient per table, not two.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from pollinate.client.device_data import DeviceData
from pollinate.client.training import LocalTrainConfig, local_optimizer, seeded_global_rng
from pollinate.shared.errors import ConfigError
from pollinate.shared.models.base import RecModel
from pollinate.shared.privacy.accounting import (
    LocalAccountant,
    check_local_accountant,
    local_epsilon,
)
from pollinate.shared.privacy.accounting import (
    calibrate_local_noise as _calibrate_local_noise,
)
from pollinate.shared.privacy.randomness import gaussian, secure_generator
from pollinate.shared.training.examples import Examples, build_examples, n_examples, take
from pollinate.shared.training.losses import get_loss

History = list[tuple[float, float, int]]
GradSampleMode = Literal["hooks", "ghost"]

#: Sample rates are capped here so that a small device keeps Poisson amplification.
MAX_SAMPLE_RATE = 0.5


# --------------------------------------------------------------------------- privacy math
@dataclass(frozen=True)
class LocalDPConfig:
    """Interaction-level DP-SGD settings of a device.

    Exactly one of ``noise_multiplier`` (z) and ``target_epsilon`` (lifetime ε from
    which z is calibrated over ``planned_rounds`` rounds) is set. ``delta`` ``None``
    means :func:`default_local_delta` of the device's training-set size. The device stops
    training once its *next* round would take its cumulative ε above ``epsilon_budget``
    (never, when ``None``; set it to ``target_epsilon`` to hold the target past
    ``planned_rounds``).
    """

    clip_norm: float
    noise_multiplier: float | None
    target_epsilon: float | None
    planned_rounds: int
    delta: float | None
    epsilon_budget: float | None
    accountant: LocalAccountant = "pld"
    grad_sample_mode: GradSampleMode = "hooks"

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip_norm) and self.clip_norm > 0):
            raise ConfigError(f"clip_norm must be positive, got {self.clip_norm}")
        if (self.noise_multiplier is None) == (self.target_epsilon is None):
            raise ConfigError("set exactly one of noise_multiplier and target_epsilon")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(f"noise_multiplier must be positive, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"target_epsilon must be positive, got {self.target_epsilon}")
        if self.planned_rounds < 1:
            raise ConfigError(f"planned_rounds must be >= 1, got {self.planned_rounds}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta}")
        if self.epsilon_budget is not None and not self.epsilon_budget > 0:
            raise ConfigError(f"epsilon_budget must be positive, got {self.epsilon_budget}")
        check_local_accountant(self.accountant)
        if self.grad_sample_mode not in ("hooks", "ghost"):
            raise ConfigError(
                f"grad_sample_mode must be 'hooks' or 'ghost', got {self.grad_sample_mode!r}"
            )


def default_local_delta(n: int) -> float:
    """δ for a device with ``n`` training examples: ``min(1e-5, 1/(10·n))``.

    δ must be well below ``1/n`` (a mechanism that publishes one random example outright
    is (0, 1/n)-DP); ``1/(10·n)`` keeps that margin for large devices and 1e-5 is the
    project-wide ceiling (docs/CALIBRATION). ``n <= 0`` gives 1e-5.
    """
    if n <= 0:
        return 1e-5
    return min(1e-5, 1.0 / (10 * n))


def device_epsilon(
    history: Sequence[tuple[float, float, int]],
    delta: float,
    accountant: LocalAccountant = "pld",
) -> float:
    """ε of a device's whole history ``[(noise, rate, steps), ...]``, as one accountant:
    :func:`~pollinate.shared.privacy.accounting.local_epsilon` (replace-one neighbours,
    dp-accounting PLD, cached per distinct history, so a device pays for its PLD once a
    round)."""
    return local_epsilon(history, delta, accountant)


@dataclass(frozen=True)
class LocalRoundPlan:
    """What one device round will do and spend (a pure decision, no torch).

    ``epsilon_before``: ε of the history so far; ``epsilon_after``: ε with this round
    appended; ``allowed``: whether the round may run (there are examples and the budget
    holds). A device with no examples has ``sample_rate = 0`` and ``steps = 0``.
    """

    sample_rate: float
    steps: int
    noise_multiplier: float
    delta: float
    epsilon_before: float
    epsilon_after: float
    allowed: bool


def local_sample_rate(n_train: int, batch_size: int) -> float:
    """Poisson rate ``min(B, n/2) / n`` rounded *up* to two significant digits.

    Expected batch B, capped at rate 0.5: never 1, which would forgo amplification by
    subsampling (see the module docstring). The rounding makes devices of similar size
    share one rate, so that a target ε is calibrated once per rate rather than once per
    device (a calibration costs seconds); the rate rounded is the rate sampled with, so
    the accountant still describes exactly what the code does.
    """
    if n_train <= 0:
        return 0.0
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    exact = min(float(batch_size), n_train * MAX_SAMPLE_RATE) / n_train
    scale = 10.0 ** (1 - math.floor(math.log10(exact)))
    return min(math.ceil(exact * scale - 1e-9) / scale, MAX_SAMPLE_RATE)


def calibrate_local_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: LocalAccountant = "pld",
) -> float:
    """Smallest z (to 0.1% of ε) whose ``steps`` steps at ``sample_rate`` spend ``target_epsilon``.

    Replace-one PLD, the accountant of :func:`device_epsilon`; the search is deterministic
    and cached, so the same device gets the same z every round (see
    :func:`pollinate.shared.privacy.accounting.calibrate_local_noise`).
    """
    check_local_accountant(accountant)
    return _calibrate_local_noise(float(target_epsilon), float(delta), float(sample_rate), steps)


def plan_local_round(
    n_train: int,
    batch_size: int,
    epochs: int,
    dp: LocalDPConfig,
    history: Sequence[tuple[float, float, int]],
    max_steps: int | None = None,
) -> LocalRoundPlan:
    """Plan a device round from its accountant ``history`` (see :class:`LocalRoundPlan`).

    ``max_steps`` caps the round's steps (``--max-local-steps``); the plan, the noise
    calibration and the history all use the capped count, so ε is that of the steps
    actually taken.
    """
    if epochs < 1:
        raise ConfigError(f"epochs must be >= 1, got {epochs}")
    delta = dp.delta if dp.delta is not None else default_local_delta(n_train)
    eps_before = device_epsilon(history, delta, dp.accountant)
    if n_train <= 0:
        z = dp.noise_multiplier if dp.noise_multiplier is not None else 0.0
        return LocalRoundPlan(0.0, 0, z, delta, eps_before, eps_before, allowed=False)
    q = local_sample_rate(n_train, batch_size)
    steps = epochs * math.ceil(1 / q)
    if max_steps is not None:
        steps = min(steps, max_steps)
    if dp.noise_multiplier is not None:
        z = float(dp.noise_multiplier)
    else:
        assert dp.target_epsilon is not None
        z = calibrate_local_noise(
            float(dp.target_epsilon), delta, q, dp.planned_rounds * steps, dp.accountant
        )
    eps_after = device_epsilon([*history, (z, q, steps)], delta, dp.accountant)
    allowed = dp.epsilon_budget is None or eps_after <= dp.epsilon_budget
    return LocalRoundPlan(q, steps, z, delta, eps_before, eps_after, allowed)


# --------------------------------------------------------------------------- training loop
@dataclass(frozen=True)
class DPTrainOutcome:
    """Result of :func:`train_device_dp`.

    ``update`` is ``None`` when the device did not train (budget spent, or no examples);
    ``history`` is the full accountant history after this round; ``epsilon`` the
    cumulative ε after it; ``stopped`` is True when the budget stopped the device.
    """

    update: dict[str, np.ndarray] | None
    n_examples: int
    seconds: float
    plan: LocalRoundPlan
    history: History
    epsilon: float
    stopped: bool
    peak_grad_sample_bytes: int


def _grad_sample_bytes(params: Sequence[nn.Parameter]) -> int:
    total = 0
    for p in params:
        gs = getattr(p, "grad_sample", None)
        for t in gs if isinstance(gs, list) else [gs]:
            if isinstance(t, torch.Tensor):
                total += t.numel() * t.element_size()
    return total


def _norm_sample_bytes(params: Sequence[nn.Parameter]) -> int:
    norms = [getattr(p, "_norm_sample", None) for p in params]
    return sum(t.numel() * t.element_size() for t in norms if isinstance(t, torch.Tensor))


@lru_cache(maxsize=1)
def _noisy_optimizers() -> tuple[type[Any], type[Any]]:
    """Opacus's ``DPOptimizer`` and ``DPOptimizerFastGradientClipping`` with the noise of
    :func:`~pollinate.shared.privacy.randomness.gaussian` over the device's ``noise_rng``
    (built on first use: Opacus is imported lazily)."""
    from opacus.optimizers import DPOptimizer, DPOptimizerFastGradientClipping
    from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed

    def _add_noise(self: Any) -> None:
        """``p.grad = summed clipped gradient + N(0, (z·C)²)``, the noise from ``noise_rng``:
        one draw per step for all parameters, in their order (one call is cheaper than one
        per parameter), cut into each parameter's share."""
        std = self.noise_multiplier * self.max_grad_norm
        params = list(self.params)
        for p in params:
            _check_processed_flag(p.summed_grad)
        sizes = [p.summed_grad.numel() for p in params]
        noise = gaussian(self.noise_rng, sum(sizes), std)
        start = 0
        for p, size in zip(params, sizes, strict=True):
            summed = p.summed_grad
            share = torch.from_numpy(noise[start : start + size]).view(summed.shape)
            p.grad = (summed + share.to(dtype=summed.dtype, device=summed.device)).view_as(p)
            _mark_as_processed(p.summed_grad)
            start += size

    class ChaChaDPOptimizer(DPOptimizer):
        def __init__(self, optimizer: Any, *, noise_rng: np.random.Generator, **kw: Any):
            super().__init__(optimizer, **kw)
            self.noise_rng = noise_rng

        add_noise = _add_noise

    class ChaChaDPOptimizerFastGradientClipping(DPOptimizerFastGradientClipping):
        def __init__(self, optimizer: Any, *, noise_rng: np.random.Generator, **kw: Any):
            super().__init__(optimizer, **kw)
            self.noise_rng = noise_rng

        add_noise = _add_noise

    return ChaChaDPOptimizer, ChaChaDPOptimizerFastGradientClipping


def _cleanup(model: RecModel, gsm: Any | None, params: Sequence[nn.Parameter]) -> None:
    """Leave ``model`` a plain RecModel: no Opacus hooks or attributes, no gradients."""
    if gsm is not None:
        gsm._close()  # removes hooks and grad_sample/_norm_sample/... attributes
    for p in params:
        for attr in ("summed_grad", "grad_sample", "_norm_sample"):
            if hasattr(p, attr):
                delattr(p, attr)
        p.grad = None
    for m in model.modules():  # left by an interrupted forward/backward
        for attr in ("activations", "max_batch_len", "autograd_grad_sample_hooks"):
            if attr in m.__dict__:
                delattr(m, attr)


def train_device_dp(
    model: RecModel,
    device: DeviceData,
    cfg: LocalTrainConfig,
    dp: LocalDPConfig,
    history: Sequence[tuple[float, float, int]],
    generator: torch.Generator,
    *,
    noise_rng: np.random.Generator | None = None,
    before_release: Callable[[History], None] | None = None,
) -> DPTrainOutcome:
    """One DP-SGD round of ``model`` on the device's training rows.

    ``history`` is the device's accountant so far; the plan (:func:`plan_local_round`)
    decides whether the round runs. If it does not, the model is untouched and
    ``update`` is ``None``. Otherwise the model is left with the DP-trained weights (the
    caller saves its private parameters from it), a plain :class:`RecModel` without any
    Opacus wrapper, hook or attribute. ``before_release(new_history)`` is called before
    the update is returned: the caller persists the accountant there (write-ahead). If
    it raises, the exception propagates, no update is returned, and the caller must not
    save the model's private parameters either.

    ``noise_rng`` draws the Poisson masks and the noise: the device's CSPRNG
    (:func:`~pollinate.shared.privacy.randomness.secure_generator`, a fresh one when
    ``None``), or a seeded one in a simulation. ``generator`` draws the negatives of
    ranking losses and seeds torch's global RNG for dropout (interest model), as in
    :func:`~pollinate.client.training.train_device`; under DP the caller passes one seeded
    secretly from the CSPRNG.
    """
    t0 = time.perf_counter()
    examples = build_examples(
        device.data, device.split.train, history_len=getattr(model, "history_len", cfg.history_len)
    )
    n = n_examples(examples)
    plan = plan_local_round(n, cfg.batch_size, cfg.epochs, dp, history, cfg.max_steps)
    if not plan.allowed:
        return DPTrainOutcome(
            update=None,
            n_examples=n,
            seconds=time.perf_counter() - t0,
            plan=plan,
            history=list(history),
            epsilon=plan.epsilon_before,
            stopped=n > 0,
            peak_grad_sample_bytes=0,
        )

    before = model.global_state()
    optimizer = local_optimizer(model, cfg)
    model.train()
    with warnings.catch_warnings(), seeded_global_rng(generator):
        # Opacus's full backward hooks fire on modules whose inputs need no gradient
        # (embedding lookups): expected, and harmless here.
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        rng = secure_generator() if noise_rng is None else noise_rng
        peak = _dp_sgd(model, examples, cfg, dp, plan, optimizer, generator, rng)

    after = model.global_state()
    update = {k: after[k] - before[k] for k in before}
    new_history: History = [*history, (plan.noise_multiplier, plan.sample_rate, plan.steps)]
    if before_release is not None:
        before_release(list(new_history))
    return DPTrainOutcome(
        update=update,
        n_examples=n,
        seconds=time.perf_counter() - t0,
        plan=plan,
        history=new_history,
        epsilon=plan.epsilon_after,
        stopped=False,
        peak_grad_sample_bytes=peak,
    )


def _ghost_backward(gsm: Any, losses: torch.Tensor) -> None:
    """Ghost clipping: per-example norms on a first backward, clipped sum on a second."""
    losses.sum().backward(retain_graph=True)
    coef = gsm.get_clipping_coef()
    for p in gsm._module.parameters():
        p.grad = None
    gsm.disable_hooks()
    try:
        (coef.detach() * losses).sum().backward()
    finally:
        gsm.enable_hooks()


def _dp_sgd(
    model: RecModel,
    examples: Examples,
    cfg: LocalTrainConfig,
    dp: LocalDPConfig,
    plan: LocalRoundPlan,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    noise_rng: np.random.Generator,
) -> int:
    """Run ``plan.steps`` DP-SGD steps on ``model`` in place; return the peak bytes of
    per-example gradients (hooks) or norms (ghost). ``model`` is unwrapped and cleaned
    up afterwards, whatever happens. Poisson masks and noise come from ``noise_rng``."""
    from opacus import GradSampleModule
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.optimizers import DPOptimizer

    noisy_plain, noisy_ghost = _noisy_optimizers()
    ghost = dp.grad_sample_mode == "ghost"
    n = n_examples(examples)
    params = list(model.parameters())
    loss_fn = get_loss(cfg.loss, reg=cfg.reg, n_negatives=cfg.negatives)
    opt_args: dict[str, Any] = {
        "noise_multiplier": plan.noise_multiplier,
        "max_grad_norm": dp.clip_norm,
        "expected_batch_size": max(1, round(plan.sample_rate * n)),  # unused with "sum"
        "loss_reduction": "sum",
        "noise_rng": noise_rng,  # add_noise draws from it; Opacus's generator is unused
    }
    peak = 0
    gsm: Any = None
    if ghost:
        _check_ghost(model, loss_fn, examples, cfg)
    try:
        if ghost:
            gsm = GradSampleModuleFastGradientClipping(
                model,
                batch_first=True,
                loss_reduction="sum",
                max_grad_norm=dp.clip_norm,
                use_ghost_clipping=True,
            )
            opt: DPOptimizer = noisy_ghost(optimizer, **opt_args)
        else:
            gsm = GradSampleModule(model, batch_first=True, loss_reduction="sum")
            opt = noisy_plain(optimizer, **opt_args)
        for _ in range(plan.steps):
            # Poisson sampling: each example in independently with probability q.
            idx = torch.from_numpy(np.flatnonzero(noise_rng.random(n) < plan.sample_rate))
            opt.zero_grad(set_to_none=True)
            if len(idx) == 0:
                # An empty batch is still a DP step: the optimizer noises a zero sum.
                for p in params:
                    if ghost:
                        p.grad = torch.zeros_like(p)
                    else:
                        setattr(p, "grad_sample", p.new_zeros((0, *p.shape)))  # noqa: B010
            elif ghost:
                _ghost_backward(gsm, loss_fn(gsm, take(examples, idx), generator))
                peak = max(peak, _norm_sample_bytes(params))
            else:
                loss_fn(gsm, take(examples, idx), generator).sum().backward()
                for p in params:  # a parameter this batch did not reach: zero per example
                    if getattr(p, "grad_sample", None) is None:
                        setattr(p, "grad_sample", p.new_zeros((len(idx), *p.shape)))  # noqa: B010
                peak = max(peak, _grad_sample_bytes(params))
            opt.step()
    finally:
        _cleanup(model, gsm, params)
    return peak


def _check_ghost(model: RecModel, loss_fn: Any, examples: Examples, cfg: LocalTrainConfig) -> None:
    """Refuse ghost clipping when a module it clips is called twice in one forward pass.

    Opacus raises only inside that forward, possibly after empty-batch steps have already
    changed the model; this probe (one example, no gradient, eval mode, a throwaway
    generator) fails first.
    """
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    norm_samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if type(module) in norm_samplers and list(module.parameters(recurse=False)):

            def count(m: nn.Module, args: Any, out: Any, name: str = name) -> None:
                calls[name] = calls.get(name, 0) + 1

            handles.append(module.register_forward_hook(count))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            loss_fn(model, take(examples, slice(0, 1)), torch.Generator().manual_seed(0))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    twice = sorted(name for name, k in calls.items() if k > 1)
    if twice:
        raise ConfigError(
            f"ghost clipping cannot train {model.name!r} with loss {cfg.loss!r} and "
            f"reg={cfg.reg}: {', '.join(twice)} called more than once per forward pass "
            "(Opacus: parameter tying is not supported); use grad_sample_mode='hooks'"
        )
