"""The interaction-level audit on real device code: an honest local-DP run passes and
defeats the curious server; the same run with the devices' noise switched off (a fault
injected into Opacus's noise) fails, both by its canaries and by the server's attack.

The federation runs the production ServerApp and ClientApp (Opacus DP-SGD, the device
policy and ledger, the canaries) in this process (:mod:`tests.audit.inprocess_grid`), so
the fault reaches the devices.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.supercore.task_identity import TaskIdentity

from pollinate.audit.one_run import default_guess_grid, epsilon_lower_bound
from pollinate.audit.report import build_report

sys.path.insert(0, str(Path(__file__).parent))
from inprocess_grid import run_in_process

pytestmark = pytest.mark.slow

CANARIES = 500
RUN = {
    "dataset": "synthetic", "synthetic-users": 50, "synthetic-items": 30, "embedding-dim": 4,
    "rounds": 2, "sample-rate": 1.0, "eval-every": 0, "progress": False,
    "server-opt": "fedavg", "server-lr": 1.0, "audit-canaries": CANARIES,
}  # fmt: skip
LOCAL = {"dp": "local", "local-noise": 10.0, "local-clip": 0.5}


@pytest.fixture(scope="module", autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


def run(out: Path, **extra: Any) -> dict[str, Any]:
    settings = {**RUN, "out": str(out), "device-state-dir": str(out / "devices"), **extra}
    return build_report(run_in_process(settings), opacus_cross_check=False)


def cap(m: int) -> float:
    return epsilon_lower_bound(m, m // 2, m // 2, 1e-5, 0.05 / len(default_guess_grid(m)))


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("local") / "honest", **LOCAL)


@pytest.fixture(scope="module")
def no_noise(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import pollinate.client.dp_training as dp_training

    with pytest.MonkeyPatch.context() as patch:
        # The fault: every device adds zero instead of its Gaussian noise, while its ledger
        # still records z = 10.
        patch.setattr(dp_training, "gaussian", lambda rng, n, std: np.zeros(n))
        yield run(tmp_path_factory.mktemp("local") / "no-noise", **LOCAL)


@pytest.fixture(scope="module")
def no_dp(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return run(tmp_path_factory.mktemp("local") / "none", dp="none")


def test_an_honest_local_run_passes_and_defeats_the_curious_server(
    honest: dict[str, Any],
) -> None:
    local = honest["empirical"]["local"]
    assert local["canaries"] == CANARIES
    assert local["passed"] is True
    assert local["epsilon_lower_bound"] <= local["claimed_epsilon"]
    server = honest["membership_inference"]["server"]
    assert server["defended_by"] == "local"
    assert server["auc"] < 0.6
    assert server["under_bound"] is True


def test_devices_without_noise_fail_both_the_canaries_and_the_attack(
    honest: dict[str, Any], no_noise: dict[str, Any]
) -> None:
    local = no_noise["empirical"]["local"]
    # The ledger claims what the honest run spent; the canaries show far more.
    assert local["claimed_epsilon"] == pytest.approx(
        honest["empirical"]["local"]["claimed_epsilon"]
    )
    assert local["passed"] is False
    assert local["epsilon_lower_bound"] > local["claimed_epsilon"]
    server = no_noise["membership_inference"]["server"]
    assert server["auc"] > 0.8
    assert server["under_bound"] is False
    assert no_noise["verdict"] == "fail"
    failed = {c["name"] for c in no_noise["checks"] if not c["passed"]}
    assert {
        "empirical audit: local",
        "membership attack under the trade-off curve: server",
    } <= failed


def test_without_dp_the_canaries_are_found_and_the_server_sees_every_item(
    no_dp: dict[str, Any],
) -> None:
    assert no_dp["verdict"] == "not-private"
    local = no_dp["empirical"]["local"]
    assert local["claimed_epsilon"] is None and local["passed"] is True  # nothing claimed
    assert local["epsilon_lower_bound"] > 0.8 * cap(CANARIES)
    assert no_dp["membership_inference"]["server"]["auc"] > 0.99


def test_the_canary_items_are_in_the_model_but_never_in_release_files(
    honest: dict[str, Any],
) -> None:
    run_dir = Path(honest["run"]["dir"])
    released = np.load(run_dir / "release" / "model.npz")
    assert released["item_bias.weight"].shape[0] == 30 + CANARIES + 1
    for path in (run_dir / "release").iterdir():
        assert b"interaction_canaries" not in path.read_bytes()
        assert b'"key"' not in path.read_bytes()


def test_the_reports_follow_the_schema_and_the_page_plots_each_roc(
    honest: dict[str, Any], no_dp: dict[str, Any]
) -> None:
    import json

    jsonschema = pytest.importorskip("jsonschema")
    from pollinate.audit.html import render_html
    from pollinate.audit.report import load_schema

    for report in (honest, no_dp):
        as_read = json.loads(json.dumps(report, allow_nan=False))
        errors = list(jsonschema.Draft202012Validator(load_schema()).iter_errors(as_read))
        assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]
    page = render_html(honest)
    assert page.count('alt="ROC of the server membership attack') == 2  # linear and log
    assert "By user activity" in page and "light" in page
