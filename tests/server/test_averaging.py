"""The iterate average: pinned against the explicit weighted sum it stands for."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.server.averaging import IterateAverage
from pollinate.shared.errors import ConfigError


def test_the_average_is_the_normalised_geometric_weighting_of_the_iterates() -> None:
    rng = np.random.default_rng(0)
    xs = [{"w": rng.normal(size=(3, 2)).astype(np.float32)} for _ in range(7)]
    beta = 0.8
    avg = IterateAverage(beta)
    for t, x in enumerate(xs, start=1):
        avg.update(x)
        weights = np.array([beta ** (t - k) for k in range(1, t + 1)])
        expected = sum(w * xs[k - 1]["w"].astype(np.float64) for k, w in enumerate(weights, 1))
        expected = expected / weights.sum()
        got = avg.value(x)["w"]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, expected, rtol=1e-6)
    # The first average is the first iterate; beta 0 is the last iterate.
    first = IterateAverage(beta)
    first.update(xs[0])
    np.testing.assert_allclose(first.value(xs[0])["w"], xs[0]["w"])
    last = IterateAverage(0.0)
    for x in xs:
        last.update(x)
    np.testing.assert_allclose(last.value(xs[-1])["w"], xs[-1]["w"])


def test_before_any_update_it_releases_the_model_it_is_given() -> None:
    x = {"w": np.ones(2)}
    assert IterateAverage(0.9).value(x)["w"] is x["w"]


def test_its_state_round_trips_and_bad_settings_are_refused() -> None:
    a, b = IterateAverage(0.5), IterateAverage(0.5)
    for v in (1.0, 3.0):
        a.update({"w": np.full(2, v)})
    b.load_state_dict(a.state_dict())
    a.update({"w": np.full(2, 5.0)})
    b.update({"w": np.full(2, 5.0)})
    like = {"w": np.zeros(2)}
    np.testing.assert_array_equal(a.value(like)["w"], b.value(like)["w"])
    for beta in (-0.1, 1.0):
        with pytest.raises(ConfigError, match="beta"):
            IterateAverage(beta)
    with pytest.raises(ConfigError, match="server-ema"):
        IterateAverage(0.5).load_state_dict({})
