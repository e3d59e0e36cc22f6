"""End to end: the real ServerApp and ClientApp on Flower's simulation runtime (Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pollinate.server.checkpoint import load_checkpoint
from pollinate.shared.config import FederationConfig
from pollinate.simulations.engine import run_federation

pytestmark = pytest.mark.slow

SMALL = {
    "dataset": "synthetic",
    "synthetic-users": 120,
    "synthetic-items": 80,
    "embedding-dim": 8,
    "eval-every": 3,
    "eval-sample-rate": 1.0,
    "progress": False,
}


def simulate(tmp: Path, name: str, **overrides: Any) -> Path:
    out = tmp / name
    cfg = FederationConfig.from_mapping(
        {**SMALL, "out": str(out), "device-state-dir": str(out / "devices"), **overrides}
    )
    run_federation(cfg)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


#: Without the private refit: with it, round 0 already fits every user's bias and vector
#: to the untrained tables, so it is no longer the untrained baseline that federated
#: learning of the global tables must beat (test_client_app covers the refit).
RATING = {"sample-rate": 0.5, "private-refit": False}


@pytest.fixture(scope="module")
def rating_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("fed"), "rating", rounds=6, **RATING)


def test_federated_mf_learns_and_beats_the_untrained_model(rating_run: Path) -> None:
    history = read_jsonl(rating_run / "metrics.jsonl")
    evals = {h["round"]: h["eval"]["rmse"] for h in history if "eval" in h}
    assert set(evals) == {0, 3, 6}
    assert evals[6] < evals[3] < evals[0]
    assert evals[6] < 0.95 * evals[0]
    summary = json.loads((rating_run / "metrics.json").read_text())
    assert set(summary["final"]) == {"rmse", "mae"}
    assert summary["final"]["rmse"] < 0.95 * evals[0]
    # The evaluation's sampling error over the run's users is reported beside it.
    assert set(summary["final_se"]) == {"rmse", "mae"}
    assert 0 < summary["final_se"]["rmse"] < 0.2 * summary["final"]["rmse"]
    assert (rating_run / "metrics.png").stat().st_size > 1000
    assert (rating_run / "global_params.npz").exists()


def test_rescoring_the_run_directory_gives_the_reported_final_metrics(rating_run: Path) -> None:
    """simulations/benchmarks/rescore_run.py rebuilds every device from the run directory
    and gets exactly the final figures the Flower run reported, with the same standard
    errors. (With this seed every device trained at least once in six rounds, so the
    never-trained path, ``fresh_model``, is exercised by the ClientApp tests only.)"""
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "simulations/benchmarks/rescore_run.py"
    done = subprocess.run(
        [sys.executable, str(script), str(rating_run)], capture_output=True, text=True, check=True
    )
    out = json.loads(done.stdout)
    summary = json.loads((rating_run / "metrics.json").read_text())
    assert out["devices"] == 120
    for name, value in summary["final"].items():
        assert out["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    for name, value in summary["final_se"].items():
        assert out["se"][name] == pytest.approx(value, rel=1e-9), name
    # Without the devices' private vectors the same global tables score differently.
    done = subprocess.run(
        [sys.executable, str(script), str(rating_run), "--private-scale", "0"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    alone = json.loads(done.stdout)
    assert alone["private_scale"] == 0.0
    assert alone["metrics"]["rmse"] != pytest.approx(summary["final"]["rmse"], rel=1e-6)


def test_every_round_records_its_poisson_sample(rating_run: Path) -> None:
    history = [h for h in read_jsonl(rating_run / "metrics.jsonl") if h["round"] > 0]
    assert [h["round"] for h in history] == list(range(1, 7))
    sizes = [h["sampled"] for h in history]
    assert all(h["aggregated"] == h["sampled"] for h in history)
    assert len(set(sizes)) > 1  # Poisson, not a fixed count
    assert 30 < np.mean(sizes) < 90  # q N = 60
    # What every round aggregated: the median and the largest update norm.
    assert all(0 < h["update_norm_median"] <= h["update_norm_max"] for h in history)


def test_devices_send_only_the_arrays_the_server_sent(rating_run: Path) -> None:
    msgs = read_jsonl(rating_run / "messages.jsonl")
    down = {k: v for m in msgs if m["direction"] == "down" for k, v in m["arrays"].items()}
    ups = [m for m in msgs if m["direction"] == "up"]
    assert set(down) == {
        "item_factors.weight",
        "item_bias.weight",
        "global_bias.weight",
    }
    assert ups
    for m in ups:
        assert m["records"] == (["metrics", "update"] if m["kind"] == "train" else ["metrics"])
        assert all(down[k] == shape for k, shape in m["arrays"].items())
        assert not any("user" in k for k in m["arrays"])
        if m["kind"] == "evaluate":
            assert m["arrays"] == {}


def test_resume_gives_the_same_result(tmp_path: Path, rating_run: Path) -> None:
    out = tmp_path / "resumed"
    simulate(tmp_path, "resumed", rounds=3, **RATING)
    cfg = FederationConfig.from_mapping(
        {**json.loads((out / "config.json").read_text()), "rounds": 6}
    )
    run_federation(cfg, resume=True)
    a = np.load(rating_run / "global_params.npz")
    b = np.load(out / "global_params.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7)
    fa = json.loads((rating_run / "metrics.json").read_text())["final"]
    fb = json.loads((out / "metrics.json").read_text())["final"]
    assert fa == pytest.approx(fb, rel=1e-6)
    assert [h["round"] for h in read_jsonl(out / "metrics.jsonl")] == list(range(0, 7))
    # Both processes that wrote the run say what they ran with.
    runs = json.loads((out / "environment.json").read_text())["runs"]
    assert [r["resumed"] for r in runs] == [False, True]
    assert all(r["packages"]["flwr"] and r["torch_cpu_capability"] for r in runs)


def test_an_interest_run_with_dropout_resumes_to_the_same_result(tmp_path: Path) -> None:
    """The interest encoder trains with dropout, whose masks must come from the seeded
    device generator (not torch's per-process random seed) for a resume to be exact; the
    iterate average it releases (``server-ema``) must come back from the checkpoint."""
    interest = {
        "server-ema": 0.5,
        "task": "ranking",
        "model": "interest",
        "synthetic-users": 60,
        "synthetic-items": 50,
        "local-epochs": 1,
        "sample-rate": 1.0,
        "eval-every": 0,
        "dropout": 0.5,
    }
    whole = simulate(tmp_path, "whole", rounds=3, **interest)
    part = simulate(tmp_path, "part", rounds=1, **interest)
    cfg = FederationConfig.from_mapping(
        {**json.loads((part / "config.json").read_text()), "rounds": 3}
    )
    run_federation(cfg, resume=True)
    a, b = np.load(whole / "global_params.npz"), np.load(part / "global_params.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)
    fa = json.loads((whole / "metrics.json").read_text())["final"]
    fb = json.loads((part / "metrics.json").read_text())["final"]
    assert fa == pytest.approx(fb, rel=1e-6)
    # What the run released is the average, not the live iterate it checkpoints.
    live = load_checkpoint(whole).params
    assert any(not np.allclose(a[k], live[k]) for k in a.files)


def test_local_adaptation_on_flower_is_reproduced_by_the_rescoring_script(tmp_path: Path) -> None:
    """Each device scores a locally adapted copy of the final model (``adapt-epochs``);
    docs/experiments/scripts/local_adaptation.py redoes that from the run directory and gets
    the run's figures exactly, and without adaptation the figures the model gives as is."""
    import subprocess
    import sys

    run = simulate(
        tmp_path, "adapted", rounds=2, task="ranking", model="interest", **{
            "synthetic-users": 60, "synthetic-items": 50, "local-epochs": 1,
            "sample-rate": 1.0, "eval-every": 0, "train-on-validation": True,
            "adapt-epochs": 1, "adapt-lr-scale": 0.5,
        },
    )  # fmt: skip
    final = json.loads((run / "metrics.json").read_text())["final"]
    script = Path(__file__).resolve().parents[2] / "docs/experiments/scripts/local_adaptation.py"

    def rescore(*args: str) -> dict[str, Any]:
        done = subprocess.run(
            [sys.executable, str(script), str(run), *args],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        return json.loads(done.stdout)  # type: ignore[no-any-return]

    again = rescore("--epochs", "1", "--lr-scale", "0.5")
    assert again["devices"] == 60
    for name, value in final.items():
        assert again["metrics"][name] == pytest.approx(value, rel=1e-9, abs=1e-12), name
    as_is = rescore("--epochs", "0")
    assert as_is["metrics"]["ndcg@10"] != pytest.approx(final["ndcg@10"], rel=1e-6)
    # What left the devices in the final evaluation: sums, no arrays.
    up = [m for m in read_jsonl(run / "messages.jsonl")
          if m["direction"] == "up" and m["kind"] == "evaluate"]  # fmt: skip
    assert len(up) == 60 and all(not m["arrays"] for m in up)


def test_the_cli_survives_empty_rounds(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pollinate.simulations.cli import app

    out = tmp_path / "sparse"
    result = CliRunner().invoke(
        app,
        [
            "simulate", "--synthetic-users", "120", "--synthetic-items", "80",
            "--embedding-dim", "8", "--rounds", "4", "--sample-rate", "0.004",
            "--eval-every", "0", "--no-progress", "--out", str(out),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    history = read_jsonl(out / "metrics.jsonl")
    assert [h["round"] for h in history] == [1, 2, 3, 4]
    assert any(h["sampled"] == 0 and h["train_loss"] is None for h in history)
    assert all(h["update_norm_max"] is None for h in history if h["sampled"] == 0)
    assert "rmse" in json.loads((out / "metrics.json").read_text())["final"]
    assert (out / "devices").is_dir()  # simulated devices keep private state on "disk"


def test_the_cli_rejects_a_bad_option_before_starting() -> None:
    from typer.testing import CliRunner

    from pollinate.simulations.cli import app

    result = CliRunner().invoke(app, ["simulate", "--sample-rate", "2"])
    assert result.exit_code == 2
    assert "sample-rate" in result.output
