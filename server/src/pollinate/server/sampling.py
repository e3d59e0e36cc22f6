"""Client sampling exactly as the privacy accountant assumes it: Poisson sampling, from a
generator that only the server knows when the run is private."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.randomness import (
    STREAM_SERVER_SAMPLER,
    RandomSource,
    secure_source,
    seeded_source,
)

ROLE = "device sampling"


def sampler_source(*, private: bool, seed: int, noise_seed: int | None) -> RandomSource:
    """The generator that samples devices, and how it was seeded.

    Amplification by subsampling assumes that nobody but the server knows who took part.
    Under DP (``private``) the sampler is therefore a secure ChaCha20 generator keyed
    from ``os.urandom``, unless the simulation flag ``noise_seed`` is set (then a seeded
    one, reported as not private against anyone who knows that seed). The run seed, which
    is sent to every device and written to ``config.json``, never seeds it. Without DP,
    ``np.random.default_rng(seed)``: reproducible, as runs without DP always were.
    """
    if not private:
        return RandomSource(
            np.random.default_rng(seed),
            f"{ROLE}: seeded with the run seed {seed} (no DP: reproducible, not secret)",
            secure=False,
        )
    if noise_seed is None:
        return secure_source(ROLE)
    return seeded_source(ROLE, noise_seed, STREAM_SERVER_SAMPLER)


def poisson_sample(node_ids: Sequence[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each node joins independently with probability ``rate``; the result may be empty.

    ``node_ids`` must be in a fixed order (sorted) so that a seeded ``rng`` gives a
    reproducible sample.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
    draws = rng.random(len(node_ids))
    return [n for n, d in zip(node_ids, draws, strict=True) if d < rate]
