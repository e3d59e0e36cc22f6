"""Fixtures of the model battery: a small synthetic dataset with planted structure."""

from __future__ import annotations

import pytest
import torch

from pollinate.shared.data import generate_synthetic
from pollinate.shared.data.types import Interactions


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The test machines are shared; one intra-op thread avoids oversubscription.
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def synthetic() -> Interactions:
    data, _ = generate_synthetic(
        n_users=400, n_items=200, mean_activity=30, n_genres=8, popularity_exponent=0.5, seed=1
    )
    return data
