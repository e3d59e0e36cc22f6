"""Most-popular: every user gets the items most often seen in training (no
personalisation). The reference a federated or private ranking model must beat to have
learned anything about its users; it is not a registered, trainable model."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from pollinate.shared.models.base import Batch, RecModel


class MostPopular(RecModel):
    """Scores item ``i`` by its training count; identical for every user."""

    name: ClassVar[str] = "most-popular"
    LOCAL_PREFIXES: ClassVar[tuple[str, ...]] = ()

    def __init__(self, popularity: np.ndarray) -> None:
        super().__init__()
        self.n_users = 1
        self.n_items = len(popularity)
        self.pop = torch.as_tensor(np.asarray(popularity), dtype=torch.float32)

    def score(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        return self.pop[items]

    def score_all(self, batch: Batch) -> torch.Tensor:
        return self.pop.expand(batch["user"].shape[0], -1)
