"""docs/experiments/scripts/popularity_gap.py: NDCG@10 by held-out item popularity."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/popularity_gap.py"


def test_ndcg_of_a_single_held_out_item(load_benchmark: Any) -> None:
    ndcg = load_benchmark("popularity_gap").ndcg_at_10(np.array([1, 2, 10, 11, 500]))
    np.testing.assert_allclose(ndcg, [1.0, 1 / np.log2(3), 1 / np.log2(11), 0.0, 0.0])


def test_groups_by_item_popularity_with_paired_differences(load_benchmark: Any) -> None:
    script = load_benchmark("popularity_gap")
    popularity = np.array([300, 2, 150, 9, 40, 500])
    fed = np.array([1, 40, 3, 50, 2, 1])
    central = np.array([1, 2, 3, 4, 30, 2])
    rare, popular = script.grouped(popularity, fed, central, 2)
    assert rare["item_popularity"] == [2, 40] and popular["item_popularity"] == [150, 500]
    d = script.ndcg_at_10(fed[[1, 3, 4]]) - script.ndcg_at_10(central[[1, 3, 4]])
    assert rare["difference"] == pytest.approx(d.mean())
    assert rare["se"] == pytest.approx(d.std(ddof=1) / np.sqrt(3))
    assert popular["federated"] == pytest.approx(script.ndcg_at_10(fed[[2, 0, 5]]).mean())
