"""Client sampling exactly as the privacy accountant assumes it: Poisson sampling."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pollinate.shared.errors import ConfigError


def poisson_sample(node_ids: Sequence[int], rate: float, rng: np.random.Generator) -> list[int]:
    """Each node joins independently with probability ``rate``; the result may be empty.

    ``node_ids`` must be in a fixed order (sorted) so that a seeded ``rng`` gives a
    reproducible sample.
    """
    if not 0 < rate <= 1:
        raise ConfigError(f"sample rate must be in (0, 1], got {rate}")
    draws = rng.random(len(node_ids))
    return [n for n, d in zip(node_ids, draws, strict=True) if d < rate]
