"""The centralized reference on the real ML-100K (skipped when the data is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pollinate.simulations.centralized import make_config, run_centralized


@pytest.mark.slow
def test_mf_on_ml_100k_reaches_rmse_below_0_95(shared_data: Path) -> None:
    config = make_config(
        dataset="ml-100k", data_dir=shared_data, model="mf", task="rating", epochs=4, refit=False
    )
    report = run_centralized(config, progress=False)
    assert report["final"]["rmse"] < 0.95, report["final"]
    assert report["n_users"] == 943
