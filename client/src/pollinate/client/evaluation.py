"""On-device evaluation: the device scores its own held-out items and returns sums.

Only sums and counts leave the device (see :mod:`pollinate.shared.wire`). Ranking is a
full ranking over every item except the device's training items and, when testing, its
validation item. Novelty and coverage need other users' data and are not computed here.
"""

from __future__ import annotations

import numpy as np
import torch

from pollinate.client.device_data import DeviceData
from pollinate.client.personalize import refit_private
from pollinate.shared.metrics import RankingEvaluator, rating_sums
from pollinate.shared.models.base import RecModel
from pollinate.shared.training.examples import build_examples

RANKING_KS = (10, 20)


@torch.no_grad()
def evaluate_device(
    model: RecModel, device: DeviceData, part: str, *, private_refit: float | None = None
) -> dict[str, float]:
    """Evaluation sums of ``part`` (``"valid"`` or ``"test"``).

    With ``private_refit`` (an L2 weight), the private parameters are first refitted in
    closed form on the training rows against the received global tables; this changes
    ``model`` in place, and the callers do not keep it (evaluating saves no state).
    """
    if part not in ("valid", "test"):
        raise ValueError(f"part must be 'valid' or 'test', got {part!r}")
    if private_refit is not None:
        refit_private(model, device, private_refit)
    model.eval()
    data, split = device.data, device.split
    rows = split.valid if part == "valid" else split.test
    if len(rows) == 0:
        return {"count": 0.0}
    context = split.train if part == "valid" else np.concatenate([split.train, split.valid])
    hist_len = getattr(model, "history_len", 0)
    ex = build_examples(data, rows, context_rows=context, history_len=hist_len)
    if device.task == "rating":
        pred = model.score(ex, ex["item"])
        if data.rating_scale is not None:
            pred = pred.clamp(*data.rating_scale)
        return rating_sums(pred, ex["rating"])
    scores = model.score_all(ex)
    seen = torch.zeros((len(rows), data.n_items), dtype=torch.bool)
    seen[:, torch.as_tensor(data.items[context], dtype=torch.long)] = True
    evaluator = RankingEvaluator(data.n_items, RANKING_KS, item_genres=data.item_genres)
    evaluator.add(scores, ex["item"], seen)
    return evaluator.sums()
