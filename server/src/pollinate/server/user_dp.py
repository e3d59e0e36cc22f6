"""User-level DP on the server: clip each device's update, sum, add Gaussian noise.

The mechanism of one round (the unit of privacy is one *user*, that is one device and
everything on it):

1. every sampled device's update ``Δ_u`` (all global arrays together, one vector) is
   clipped to L2 norm ``S``: ``Δ_u · min(1, S / ‖Δ_u‖)``;
2. the clipped updates are summed with **equal weights**;
3. Gaussian noise ``N(0, (z·S)²)`` is added to every coordinate of the sum;
4. the noisy sum is divided by the *expected* number of devices ``q·N``, never by the
   realised count (which depends on who took part and would break the sensitivity
   bound).

Devices are sampled by Poisson sampling at rate ``q`` (:mod:`pollinate.server.sampling`),
which is what the accountant assumes: ``PoissonSampled(q, Gaussian(z))`` per round.
A round in which no device took part still releases noise, so an empty round looks like
any other. Non-finite updates never reach this module: the allow-list check rejects them.

Everything here depends only on its inputs and an explicit generator; a round's state is
its :class:`ClippedSum`, built fresh for the round.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pollinate.server.aggregate import Spec, UpdateSum, update_norm
from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.randomness import (
    STREAM_SERVER_NOISE,
    RandomSource,
    gaussian,
    secure_source,
    seeded_source,
)

Arrays = dict[str, np.ndarray]


def clip_update(update: Mapping[str, np.ndarray], clip: float) -> tuple[Arrays, float]:
    """``update`` scaled to L2 norm at most ``clip``; returns it and its original norm.

    A zero update stays zero (no division by zero).
    """
    if not clip > 0:
        raise ConfigError(f"the user-level clip norm must be positive, got {clip}")
    norm = update_norm(update)
    scale = 1.0 if norm <= clip else clip / norm
    return {n: np.asarray(a, dtype=np.float64) * scale for n, a in update.items()}, norm


class ClippedSum(UpdateSum):
    """The running sum of clipped updates (steps 1 and 2), one update at a time.

    ``norms`` keeps every update's norm before clipping, for the run log.
    """

    def __init__(self, spec: Spec, clip: float) -> None:
        if not clip > 0:
            raise ConfigError(f"the user-level clip norm must be positive, got {clip}")
        super().__init__(spec)
        self.clip = clip

    def add(
        self, update: Mapping[str, np.ndarray], weight: float = 1.0, norm: float | None = None
    ) -> None:
        """Clip and add one update. ``norm`` is ignored: the sensitivity bound rests on
        the norm the clip computes itself."""
        if weight != 1.0:
            raise ValueError(
                "user-level DP sums every clipped update once: a weight would break the "
                "sensitivity bound (use --aggregation equal)"
            )
        clipped, norm = clip_update({n: update[n] for n in self.total}, self.clip)
        self.norms.append(norm)
        self._accumulate(clipped)

    def mean(self) -> Arrays:
        """Refused: dividing by the realised count would break the sensitivity bound."""
        raise TypeError(
            "a user-level DP sum is released with noisy_mean (divided by the expected "
            "count q·N); the realised count depends on who took part"
        )

    def noisy_mean(
        self, *, noise_multiplier: float, expected_devices: float, rng: np.random.Generator
    ) -> Arrays:
        """Steps 3 and 4: the sum plus ``N(0, (z·S)²)`` noise, over ``q·N``.

        The noise is :func:`~pollinate.shared.privacy.randomness.gaussian` over ``rng``
        (float64, the floating-point mitigation included). An empty sum (no device took
        part) still gives a pure-noise estimate of the right shape.
        """
        if not expected_devices > 0:
            raise ConfigError(
                f"the expected number of devices must be positive, got {expected_devices}"
            )
        if noise_multiplier < 0:
            raise ConfigError(f"the noise multiplier must be >= 0, got {noise_multiplier}")
        std = noise_multiplier * self.clip
        out: Arrays = {}
        for n, (shape, dtype) in self.spec.items():
            noisy = self.total[n] + gaussian(rng, shape, std)
            out[n] = (noisy / expected_devices).astype(dtype)
        return out


def default_user_delta(n_devices: int) -> float:
    """``min(1e-5, 1/(10·N))`` for ``N`` devices.

    δ must be well below ``1/N``: a mechanism that publishes one random user's data
    outright is ``(0, 1/N)``-DP. ``1/(10·N)`` keeps a factor of ten below that (``N·δ``
    at most 0.1), and 1e-5 is the project-wide ceiling, as for a device's default δ.
    """
    if n_devices < 1:
        raise ConfigError(f"need at least one device, got {n_devices}")
    return min(1e-5, 1.0 / (10 * n_devices))


#: The generator of privacy noise, and how it was seeded (for the report).
NoiseSource = RandomSource


def noise_source(seed: int | None, *, role: str) -> NoiseSource:
    """A secure ChaCha20 generator (keyed with 256 bits from ``os.urandom``), or a seeded one.

    A seed makes a simulation reproducible and must never be used in a deployment: who
    knows the seed can subtract the noise. The description says which one was used, and
    ``secure`` whether its state may be checkpointed (never, when secure).
    """
    if seed is None:
        return secure_source(role)
    return seeded_source(role, seed, STREAM_SERVER_NOISE)
