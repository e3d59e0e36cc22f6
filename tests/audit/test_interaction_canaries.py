"""Interaction-level canaries: replace-one pairs decided by a secret key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollinate.client.device_data import DeviceIndex, with_interaction_canaries
from pollinate.shared.privacy.interaction_canaries import (
    InteractionCanaries,
    InteractionCanaryError,
    expected_canaries,
)
from pollinate.shared.tasks import load_task


@pytest.fixture(scope="module")
def index() -> DeviceIndex:
    return DeviceIndex(
        load_task("synthetic", task="rating", synthetic_users=40, synthetic_items=25)
    )


def test_a_canary_is_a_replacement_not_an_addition(index: DeviceIndex) -> None:
    """Whatever the coins, a device holds the same rows: only the item they name moves."""
    canaries = InteractionCanaries.create(120, 40, 25, key=1)
    hosts, included = canaries.plan()
    flipped = [InteractionCanaries.create(120, 40, 25, key=k) for k in (2, 3)]
    for u in range(40):
        device = index.device(u)
        got = with_interaction_canaries(device, canaries, u)
        k = int(np.sum(hosts == u))
        assert len(got.split.train) == len(device.split.train) + k
        assert got.data.n_items == 25 + 121
        extra = got.data.items[got.split.train][len(device.split.train) :]
        expected = [25 + c if included[c] else 25 + 120 for c in np.flatnonzero(hosts == u)]
        assert extra.tolist() == expected
        assert got.data.ratings is not None
        assert np.all(got.data.ratings[got.split.train][len(device.split.train) :] == 5.0)
        # Test and validation rows are untouched.
        assert np.array_equal(got.split.test, device.split.test)
    # The plan depends on the key only, and about half the canaries are included.
    assert 40 < included.sum() < 80
    assert any(not np.array_equal(c.plan()[1], included) for c in flipped)


def test_scores_read_the_canary_items_bias() -> None:
    canaries = InteractionCanaries.create(3, 5, 4, key=0)
    initial = {"item_bias.weight": np.zeros((8, 1)), "item_factors.weight": np.zeros((8, 2))}
    released = {k: v.copy() for k, v in initial.items()}
    released["item_bias.weight"][4:7, 0] = [0.5, -0.1, 0.0]
    released["item_bias.weight"][7, 0] = 9.0  # the sink does not count
    assert canaries.scores(released, initial).tolist() == pytest.approx([0.5, -0.1, 0.0])


def test_the_file_round_trips_and_a_missing_one_is_named(tmp_path: Path) -> None:
    canaries = InteractionCanaries.create(10, 5, 4)
    canaries.save(tmp_path)
    assert InteractionCanaries.load(tmp_path) == canaries
    with pytest.raises(InteractionCanaryError, match="without interaction canaries"):
        InteractionCanaries.load(tmp_path / "elsewhere")


def test_which_layers_get_canaries() -> None:
    assert expected_canaries(100, "local") == (100, 0)
    assert expected_canaries(100, "user") == (0, 100)
    assert expected_canaries(100, "both") == (100, 100)
    assert expected_canaries(100, "none") == (100, 100)
    assert expected_canaries(0, "both") == (0, 0)
