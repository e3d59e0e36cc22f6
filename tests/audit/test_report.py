"""The static audit report (pollinate.audit.report) on real small runs: it follows its
schema, recomputes every ε, and fails where it must (a seeded run, an edited ledger)."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from pollinate.audit.report import RECOMPUTE_TOLERANCE, build_report, load_schema, write_report
from pollinate.shared.config import FederationConfig
from pollinate.simulations.engine import run_federation

jsonschema = pytest.importorskip("jsonschema")

RUN = {
    "dataset": "synthetic",
    "synthetic-users": 50,
    "synthetic-items": 30,
    "embedding-dim": 4,
    "rounds": 3,
    "sample-rate": 0.5,
    "eval-every": 0,
    "progress": False,
    "server-opt": "fedavg",
    "server-lr": 1.0,
}
BOTH = {
    "dp": "both",
    "local-noise": 1.0,
    "local-clip": 0.5,
    "user-noise": 1.0,
    "user-clip": 0.1,
    "noise-seed": 3,
}


def simulate(out: Path, **overrides: Any) -> Path:
    cfg = FederationConfig.from_mapping(
        {**RUN, "out": str(out), "device-state-dir": str(out / "devices"), **overrides}
    )
    run_federation(cfg)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_schema(report: dict[str, Any]) -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    # Through JSON, as a reader gets it (NaN or infinity would not survive this).
    as_read = json.loads(json.dumps(report, allow_nan=False))
    errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(as_read), key=str)
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors[:5]]


def check(report: dict[str, Any], name: str) -> dict[str, Any]:
    (found,) = [c for c in report["checks"] if c["name"] == name]
    return found


@pytest.fixture(scope="module")
def both_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("audit") / "both", **BOTH)


@pytest.fixture(scope="module")
def none_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return simulate(tmp_path_factory.mktemp("audit") / "none", dp="none")


@pytest.fixture(scope="module")
def both_report(both_run: Path) -> dict[str, Any]:
    return build_report(both_run)


@pytest.fixture(scope="module")
def none_report(none_run: Path) -> dict[str, Any]:
    return build_report(none_run, opacus_cross_check=False)


def test_schema_is_valid_and_ships_with_the_package() -> None:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert {"verdict", "layers", "releases", "empirical", "membership_inference", "leakage",
            "sampling_test", "checks"} <= set(schema["required"])  # fmt: skip


@pytest.mark.slow
def test_dp_report_follows_the_schema(both_report: dict[str, Any]) -> None:
    check_schema(both_report)
    assert set(both_report["layers"]) == {"local", "user"}
    assert set(both_report["empirical"]) == {"local", "user"}
    assert set(both_report["membership_inference"]) == {"server", "release"}


@pytest.mark.slow
def test_none_report_follows_the_schema_and_is_not_private(none_report: dict[str, Any]) -> None:
    check_schema(none_report)
    assert none_report["verdict"] == "not-private"
    assert none_report["layers"] == {}
    assert not any(r["covered"] for r in none_report["releases"][:4])


@pytest.mark.slow
def test_recomputed_epsilon_equals_the_ledger(both_run: Path, both_report: dict[str, Any]) -> None:
    events = read_jsonl(both_run / "ledger.jsonl")
    user = [e for e in events if e["layer"] == "user"]
    local = [e for e in events if e["layer"] == "local"]
    layers = both_report["layers"]
    assert layers["user"]["epsilon"] == max(e["epsilon"] for e in user)
    assert layers["local"]["epsilon"] == max(e["epsilon"] for e in local)
    for name in ("local", "user"):
        layer = layers[name]
        assert layer["epsilon_recomputed"] == pytest.approx(
            layer["epsilon"], rel=RECOMPUTE_TOLERANCE
        )
        assert layer["worst_relative_error"] <= RECOMPUTE_TOLERANCE
        assert check(both_report, f"recomputation: {name}")["passed"]
    rounds = [r["round"] for r in layers["user"]["epsilon_per_round"]]
    assert rounds == [1, 2, 3]
    assert check(both_report, "one user event per completed round")["passed"]
    assert check(both_report, "user δ ≤ 1/N")["passed"]
    assert check(both_report, "allow-list")["passed"]
    assert check(both_report, "published privacy summary matches the ledger")["passed"]
    devices = layers["local"]["devices"]
    assert devices["accounted"] == len({e["device"] for e in local})
    assert sum(devices["histogram"]["counts"]) == devices["accounted"]
    # The profile is decreasing in δ and passes through the run's (δ, ε).
    profile = layers["user"]["privacy_profile"]
    eps = [p["epsilon"] for p in sorted(profile, key=lambda p: p["delta"])]
    assert eps == sorted(eps, reverse=True)
    at_run = [p for p in profile if p["delta"] == layers["user"]["delta"]]
    assert at_run[0]["epsilon"] == pytest.approx(layers["user"]["epsilon"], rel=1e-6)


@pytest.mark.slow
def test_seeded_run_fails_the_trust_model_check(both_report: dict[str, Any]) -> None:
    noise = check(both_report, "noise source (trust model)")
    assert not noise["passed"]
    assert "SEEDED" in noise["detail"]
    assert both_report["verdict"] == "fail"
    # A run without canaries cannot pass: its empirical audit is not run, and says why.
    for layer in ("local", "user"):
        assert not check(both_report, f"empirical audit: {layer}")["passed"]
        assert "not run" in both_report["empirical"][layer]["status"]
    assert both_report["empirical"]["user"]["epsilon_lower_bound"] is None
    assert any("cannot pass" in x for x in both_report["limitations"])


@pytest.mark.slow
def test_edited_ledger_epsilon_fails_the_recomputation(both_run: Path, tmp_path: Path) -> None:
    edited = tmp_path / "edited"
    shutil.copytree(both_run, edited, ignore=shutil.ignore_patterns("devices"))
    lines = (edited / "ledger.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    i = next(i for i, e in enumerate(events) if e["layer"] == "user")
    events[i]["epsilon"] *= 0.9  # claims less privacy loss than the parameters give
    (edited / "ledger.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    report = build_report(edited, opacus_cross_check=False)
    assert not check(report, "recomputation: user")["passed"]
    assert check(report, "recomputation: local")["passed"]
    assert report["verdict"] == "fail"
    assert report["layers"]["user"]["worst_relative_error"] == pytest.approx(0.1, rel=1e-3)


@pytest.mark.slow
def test_leakage_dense_under_local_dp_sparse_without(
    both_report: dict[str, Any], none_report: dict[str, Any]
) -> None:
    dp = both_report["leakage"]
    assert dp["item_table"] == "item_factors.weight"
    assert dp["dense"] is True and dp["sparse_uploads"] == 0
    assert dp["item_table_density"]["min"] == 1.0
    plain = none_report["leakage"]
    assert plain["item_table"] == "item_factors.weight"
    assert plain["dense"] is False and plain["sparse_uploads"] == plain["uploads"]
    assert plain["item_table_density"]["max"] < 1.0
    assert "which items" in plain["statement"]


@pytest.mark.slow
def test_sampling_test_p_value(both_report: dict[str, Any], none_report: dict[str, Any]) -> None:
    for report in (both_report, none_report):
        s = report["sampling_test"]
        assert 0.0 <= s["p_value"] <= 1.0
        assert len(s["cohort_sizes"]) == 3
        assert s["expected_mean"] == pytest.approx(50 * 0.5)
        assert "binomial" in s["method"]


@pytest.mark.slow
def test_html_is_self_contained_and_shows_the_headline(
    both_run: Path, none_run: Path, tmp_path: Path
) -> None:
    json_path, html_path = write_report(both_run, tmp_path / "both")
    report = json.loads(json_path.read_text())
    page = html_path.read_text()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", page)
    assert "<script" not in page
    assert page.count("data:image/png;base64,") == 3  # histogram, user ε, profile
    head = page[: page.index("<h2>")]  # before the first section: the headline
    assert "Verdict: fail" in head
    for layer in ("local", "user"):
        assert f"{report['layers'][layer]['epsilon']:.4g}" in head
    assert "not run" in head  # the empirical bound's status
    _, none_html = write_report(none_run, tmp_path / "none")
    none_page = none_html.read_text()
    assert "Verdict: not-private" in none_page
    assert "http://" not in none_page and "https://" not in none_page
