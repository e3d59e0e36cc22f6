"""A device's evaluation reply under local DP: a Gaussian release of a few metric sums.

Unit and relation: one interaction, replace-one (as the device's DP-SGD). What the
sums depend on, and by how much one replaced interaction can move them:

* **rating** (``se_sum``, ``ae_sum`` over the device's held-out ratings). Predictions
  come from the DP-trained model alone (the private refit and local adaptation are
  refused under local DP), clamped to the rating scale ``[lo, hi]``; replacing one
  held-out rating moves ``se_sum`` by at most ``(hi - lo)²`` and ``ae_sum`` by at most
  ``hi - lo``. Replacing a training interaction moves neither.
* **ranking** (``hr@10_sum``, ``ndcg@10_sum``). Each held-out item contributes at most 1
  to each sum. Replacing a held-out interaction moves its own two terms by at most 1;
  replacing a training interaction changes which items are excluded from the ranking,
  which can move every held-out item's rank, so each sum by at most ``count``.

``count`` is released as is: under replace-one the number of held-out rows does not
change (it is a function of the device's interaction count, which local DP treats as
public). The noise is ``N(0, σ²)`` per released sum with ``σ = z · Δ / 2``, where ``Δ`` is
the replace-one L2 sensitivity above: dp-accounting's Gaussian event under REPLACE_ONE
charges sensitivity 2 in units of the noise multiplier, so the ledger records
``clip_norm = Δ / 2`` and ``noise_multiplier = z`` with sampling rate 1 and one step.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.randomness import gaussian

#: The sums a device releases under local DP, by task (fewer sums, less noise each).
NOISED_SUMS: dict[str, tuple[str, ...]] = {
    "rating": ("se_sum", "ae_sum"),
    "ranking": ("hr@10_sum", "ndcg@10_sum"),
}


def evaluation_sensitivity(
    task: str, count: int, rating_scale: tuple[float, float] | None
) -> float:
    """The replace-one L2 sensitivity of the released sums (see the module docstring)."""
    if count <= 0:
        return 0.0
    if task == "rating":
        if rating_scale is None:
            raise ConfigError(
                "a noised rating evaluation needs a bounded rating scale; this dataset has none"
            )
        span = float(rating_scale[1] - rating_scale[0])
        return math.hypot(span * span, span)
    if task == "ranking":
        return float(count) * math.sqrt(2.0)
    raise ConfigError(f"unknown task {task!r}")


def noised_sums(
    sums: Mapping[str, float],
    task: str,
    rating_scale: tuple[float, float] | None,
    noise_multiplier: float,
    rng: np.random.Generator,
) -> tuple[dict[str, float], float]:
    """The released sums and the sensitivity unit ``Δ / 2`` (the ledger's ``clip_norm``).

    A device without held-out rows releases zeros and costs nothing (unit 0).
    """
    if not noise_multiplier > 0:
        raise ConfigError(
            f"the evaluation noise multiplier must be positive, got {noise_multiplier}"
        )
    count = int(sums.get("count", 0))
    keys = NOISED_SUMS[task]
    sensitivity = evaluation_sensitivity(task, count, rating_scale)
    out: dict[str, float] = {"count": float(count)}
    if sensitivity == 0.0:
        out.update(dict.fromkeys(keys, 0.0))
        return out, 0.0
    unit = sensitivity / 2
    noise = gaussian(rng, (len(keys),), noise_multiplier * unit)
    for key, draw in zip(keys, noise, strict=True):
        out[key] = float(sums[key]) + float(draw)
    return out, unit
