"""Shared pieces of the SDK tests: a small catalogue and an MF global model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.client.keys import new_key
from pollinate.shared.catalogue import Catalogue

GENRES = ("Action", "Comedy", "Drama", "Horror")


def make_catalogue(n: int = 40, seed: int = 0) -> Catalogue:
    rng = np.random.default_rng(seed)
    genres = np.zeros((n, len(GENRES)), dtype=np.float32)
    genres[np.arange(n), np.arange(n) % len(GENRES)] = 1
    return Catalogue(
        item_ids=np.array([f"item-{i}" for i in range(n)]),
        genres=genres,
        genre_names=GENRES,
        popularity=rng.integers(0, 100, n).astype(float),
        rating_scale=(1.0, 5.0),
        titles=np.array([f"Title {i}" for i in range(n)]),
    )


def make_mf(n: int = 40, dim: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """Item factors with planted structure: item i leans on factor i % dim."""
    rng = np.random.default_rng(seed)
    q = rng.normal(0, 0.1, (n, dim))
    q[np.arange(n), np.arange(n) % dim] += 1.0
    return {
        "item_factors.weight": q.astype(np.float32),
        "item_bias.weight": rng.normal(0, 0.1, (n, 1)).astype(np.float32),
        "global_bias.weight": np.array([[3.0]], dtype=np.float32),
    }


@pytest.fixture
def key() -> bytes:
    return new_key()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "device.db"


@pytest.fixture
def mf_config() -> dict[str, Any]:
    return {"model": "mf", "task": "rating", "embedding-dim": 4}
