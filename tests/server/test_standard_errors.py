"""Standard errors of the final metrics, from the per-device sums the server receives."""

from __future__ import annotations

import numpy as np
import pytest

from pollinate.server.evaluation import finalize, standard_errors


def test_one_user_a_device_gives_the_sample_sd_over_root_n() -> None:
    rng = np.random.default_rng(0)
    ndcg = rng.uniform(0, 1, 200) * (rng.uniform(size=200) < 0.4)
    parts = [{"count": 1.0, "ndcg@10_sum": float(v), "hr@10_sum": float(v > 0)} for v in ndcg]
    parts.append({"count": 0.0})  # a device with no test item takes no part
    se = standard_errors("ranking", parts)
    assert se["ndcg@10"] == pytest.approx(ndcg.std(ddof=1) / np.sqrt(200), rel=1e-12)
    hr = (ndcg > 0).astype(float)
    assert se["hr@10"] == pytest.approx(hr.std(ddof=1) / np.sqrt(200), rel=1e-12)
    assert "recall@20" not in se  # no sums for it, no figure


def test_devices_with_equal_counts_are_clusters() -> None:
    """With ``c`` users on every device the ratio estimator's SE is the SE of the device
    means: the users of one device are not counted as independent draws."""
    rng = np.random.default_rng(1)
    means = rng.uniform(0, 1, 50)
    parts = [{"count": 4.0, "ndcg@10_sum": 4.0 * float(m)} for m in means]
    se = standard_errors("ranking", parts)
    assert se["ndcg@10"] == pytest.approx(means.std(ddof=1) / np.sqrt(50), rel=1e-12)


def test_rating_errors_use_the_delta_method_for_rmse() -> None:
    rng = np.random.default_rng(2)
    err = rng.normal(0, 0.9, 300)
    parts = [{"count": 1.0, "se_sum": float(e * e), "ae_sum": float(abs(e))} for e in err]
    se = standard_errors("rating", parts)
    rmse = finalize("rating", {"count": 300.0, "se_sum": float((err**2).sum()),
                               "ae_sum": float(np.abs(err).sum())})["rmse"]  # fmt: skip
    sq_se = (err**2).std(ddof=1) / np.sqrt(300)
    assert se["rmse"] == pytest.approx(sq_se / (2 * rmse), rel=1e-12)
    assert se["mae"] == pytest.approx(np.abs(err).std(ddof=1) / np.sqrt(300), rel=1e-12)
    # A bootstrap over users agrees with the delta method to within its own noise.
    boot = [np.sqrt((rng.choice(err, 300) ** 2).mean()) for _ in range(2000)]
    assert np.std(boot) == pytest.approx(se["rmse"], rel=0.1)


def test_fewer_than_two_devices_give_no_standard_error() -> None:
    assert standard_errors("ranking", [{"count": 1.0, "ndcg@10_sum": 0.5}]) == {}
    assert standard_errors("ranking", []) == {}
