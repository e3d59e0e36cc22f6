"""The empirical user-level audit can pass and can fail: canary devices scored from the
released model against the ε the ledger claims."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.audit.empirical import claimed_user_privacy, user_level_audit
from pollinate.audit.one_run import default_guess_grid, epsilon_lower_bound
from pollinate.server import user_dp
from pollinate.server.canaries import CANARY_FILE, UserCanaries
from pollinate.server.federation import Server, write_summary
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import arrays_to_record, record_to_arrays

DEVICES = 20
CANARIES = 100


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class Devices:
    """Twenty devices that each send a small random update (seeded by node and round)."""

    def get_node_ids(self) -> list[int]:
        return list(range(1, DEVICES + 1))

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        out = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            if msg.metadata.message_type.endswith("enroll"):
                content = RecordDict({"metrics": MetricRecord({"device-key": node})})
            else:
                rng = np.random.default_rng([node, int(msg.metadata.group_id)])
                params = record_to_arrays(msg.content.array_records["global"])
                upd = {
                    k: (0.01 * rng.standard_normal(v.shape)).astype(v.dtype)
                    for k, v in params.items()
                }
                metrics = {"num-examples": 5, "train-loss": 0.4, "train-seconds": 0.01}
                content = RecordDict(
                    {"update": arrays_to_record(upd), "metrics": MetricRecord(metrics)}
                )
            out.append(Message(content, reply_to=msg))
        return out


def run(tmp_path: Path, **extra: Any) -> Path:
    cfg = FederationConfig.from_mapping(
        {"embedding-dim": 8, "server-opt": "fedavg", "server-lr": 1.0, "out": str(tmp_path),
         "rounds": 5, "eval-every": 0, "sample-rate": 1.0, "progress": False,
         "audit-canaries": CANARIES, "user-clip": 0.1, "noise-seed": 3} | extra
    )  # fmt: skip
    catalog = Catalog(n_items=500, item_genres=None, rating_scale=(1.0, 5.0))
    outcome = Server(Devices(), cfg, catalog, n_devices=DEVICES).run()  # type: ignore[arg-type]
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_flat()))
    write_summary(tmp_path, cfg, outcome)
    return tmp_path


def cap(m: int) -> float:
    """The largest bound the audit's grid can give: its widest rule guesses half the
    canaries, all right, each rule at β/16 (Bonferroni)."""
    return epsilon_lower_bound(m, m // 2, m // 2, 1e-5, 0.05 / len(default_guess_grid(m)))


def test_without_dp_the_canaries_are_found_and_the_run_is_not_private(tmp_path: Path) -> None:
    out = run(tmp_path, dp="none")
    audit = user_level_audit(out)
    assert audit["canaries"] == CANARIES and audit["claimed_epsilon"] is None
    # Every canary is told apart: the bound sits near what 100 canaries can show at all.
    assert audit["guesses"]["correct"] == audit["guesses"]["guesses"]
    assert audit["epsilon_lower_bound"] == pytest.approx(cap(CANARIES), rel=1e-6)
    assert audit["passed"]  # nothing was claimed, so nothing is contradicted
    # The canaries' secrets are audit-only: release/ never holds them.
    assert (out / CANARY_FILE).exists()
    assert not any("canar" in p.name for p in (out / "release").iterdir())


def test_strong_noise_passes_and_the_same_run_without_its_noise_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    strong = {"dp": "user", "user-noise": 20.0}
    honest = user_level_audit(run(tmp_path / "honest", **strong))
    claimed = honest["claimed_epsilon"]
    assert claimed is not None and honest["epsilon_lower_bound"] <= claimed
    assert honest["passed"]
    # A fault that disables the noise while the ledger still says z = 20.
    monkeypatch.setattr(user_dp, "gaussian", lambda rng, shape, std: np.zeros(shape))
    broken = user_level_audit(run(tmp_path / "broken", **strong))
    assert broken["claimed_epsilon"] == pytest.approx(claimed)
    assert broken["epsilon_lower_bound"] > claimed
    assert not broken["passed"]


def test_a_ledger_edited_to_claim_more_noise_fails_the_audit(tmp_path: Path) -> None:
    out = run(tmp_path, dp="user", **{"user-noise": 0.5})
    ledger = out / "ledger.jsonl"
    lines = [json.loads(line) for line in ledger.read_text().splitlines()]
    for line in lines:
        line["noise_multiplier"] = 10.0  # the claim; the run used 0.5
    ledger.write_text("".join(json.dumps(line) + "\n" for line in lines))
    claimed, _ = claimed_user_privacy(out)
    audit = user_level_audit(out)
    assert audit["claimed_epsilon"] == pytest.approx(claimed)
    assert audit["epsilon_lower_bound"] > claimed and not audit["passed"]


def test_canaries_are_exactly_one_users_largest_contribution(tmp_path: Path) -> None:
    spec = {"a": ((30, 4), "float32"), "b": ((30, 1), "float32")}
    canaries = UserCanaries.create(8, spec, 0.25, np.random.default_rng(0))
    for k in range(canaries.m):
        d = canaries.direction(k)
        assert set(d) == {"a", "b"}
        norm = np.sqrt(sum(float(np.sum(v * v)) for v in d.values()))
        assert norm == pytest.approx(1.0)
    # Saved and loaded: the same coins and directions.
    canaries.save(tmp_path, {"a": np.zeros((30, 4)), "b": np.zeros((30, 1))})
    again = UserCanaries.load(tmp_path)
    assert again.included == canaries.included
    np.testing.assert_array_equal(again.direction(3)["a"], canaries.direction(3)["a"])


def test_the_report_passes_an_honest_user_level_run_and_fails_it_without_noise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pollinate.audit.report import build_report

    secure = {"dp": "user", "user-noise": 20.0, "noise-seed": None}
    honest = build_report(run(tmp_path / "honest", **secure))
    assert honest["verdict"] == "pass", honest["verdict_reason"]
    assert honest["empirical"]["user"]["passed"] is True
    monkeypatch.setattr(user_dp, "gaussian", lambda rng, shape, std: np.zeros(shape))
    broken = build_report(run(tmp_path / "broken", **secure))
    assert broken["verdict"] == "fail"
    failed = [c["name"] for c in broken["checks"] if not c["passed"]]
    assert failed == ["empirical audit: user"]
