"""The run directory: operator files where they always were, and ``release/`` holding only
what may be published (the model, the public config, the privacy block, covered figures)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.server.federation import EVALUATION_COVERAGE, Server, write_summary
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import arrays_to_record, record_to_arrays, refusal_content

RELEASE_FILES = {"model.npz", "config.json", "privacy.json", "metrics.json"}
#: Words that name something un-noised about devices: none may be a key in release/.
DEVICE_WORDS = ("norm", "loss", "sampled", "participant", "examples", "clipped", "node",
                "aggregated", "rejected", "refused", "eval_devices", "devices_trained")  # fmt: skip


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class DeviceGrid:
    """Devices 1..4: enroll with their node id as key, train a constant step, and return
    the rating sums se = node, ae = 1, count = 2 (node 4 refuses to evaluate). Under
    local DP their replies are the noised kinds (with ``local-epsilon``)."""

    def __init__(self, local: bool) -> None:
        self.local = local

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3, 4]

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        return [Message(self.answer(m), reply_to=m) for m in messages]

    def answer(self, msg: Message) -> RecordDict:
        node = msg.metadata.dst_node_id
        kind = msg.metadata.message_type
        if kind.endswith("enroll"):
            return RecordDict({"metrics": MetricRecord({"device-key": node})})
        params = record_to_arrays(msg.content.array_records["global"])
        if kind.startswith("train"):
            upd = arrays_to_record({k: np.full_like(v, 0.01) for k, v in params.items()})
            metrics: dict[str, Any] = (
                {"local-epsilon": 0.5}
                if self.local
                else {"num-examples": 5, "train-loss": 0.4, "train-seconds": 0.01}
            )
            return RecordDict({"update": upd, "metrics": MetricRecord(metrics)})
        if node == 4:
            return refusal_content("evaluation")
        sums: dict[str, Any] = {"se_sum": float(node), "ae_sum": 1.0, "count": 2}
        if self.local:
            sums["local-epsilon"] = 0.7
        return RecordDict({"metrics": MetricRecord(sums)})


def run(tmp_path: Path, **extra: Any) -> tuple[Server, dict[str, Any]]:
    cfg = FederationConfig.from_mapping(
        {"embedding-dim": 4, "server-opt": "fedavg", "server-lr": 1.0, "out": str(tmp_path),
         "rounds": 2, "eval-every": 1, "sample-rate": 1.0, "eval-sample-rate": 1.0,
         "progress": False, "data-dir": str(tmp_path / "data"),
         "device-state-dir": str(tmp_path / "devices")} | extra
    )  # fmt: skip
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    server = Server(DeviceGrid(cfg.local_dp), cfg, catalog, n_devices=4)  # type: ignore[arg-type]
    outcome = server.run()
    write_summary(tmp_path, cfg, outcome)
    return server, outcome


def keys_of(obj: Any) -> Iterator[str]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield str(k)
            yield from keys_of(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from keys_of(v)


def release(tmp_path: Path) -> dict[str, Any]:
    folder = tmp_path / "release"
    assert {p.name for p in folder.iterdir()} == RELEASE_FILES
    return {n: json.loads((folder / n).read_text()) for n in RELEASE_FILES - {"model.npz"}}


#: The final metrics of nodes 1-3 (node 4 refuses): RMSE √(6/6) = 1, MAE 3/6 = 0.5.
FINAL = {"rmse": math.sqrt((1 + 2 + 3) / 6), "mae": 3 / 6}


def test_a_user_dp_release_holds_no_utility_figure_and_nothing_about_devices(
    tmp_path: Path,
) -> None:
    server, _ = run(
        tmp_path, dp="user", **{"user-noise": 1.0, "user-clip": 0.5, "noise-seed": 9,
                                "user-accountant": "rdp", "learn-global-mean": False},
    )  # fmt: skip
    files = release(tmp_path)
    for name in ("config.json", "privacy.json", "metrics.json"):
        named = [k for k in keys_of(files[name]) if any(w in k for w in DEVICE_WORDS)]
        if name == "config.json":  # settings, not figures: the loss function, a grad clip
            assert set(named) <= {"loss", "encoder-max-grad-norm"}
        else:
            assert named == [], name
        text = (tmp_path / "release" / name).read_text()
        assert str(tmp_path) not in text  # no local path
    config = files["config.json"]
    for private in ("data-dir", "out", "device-state-dir", "noise-seed"):
        assert private not in config
    assert config["dp"] == "user" and config["user-noise"] == 1.0
    assert files["metrics.json"] == {"dp": "user", "utility": EVALUATION_COVERAGE["user"]}
    assert files["privacy.json"]["evaluation"] == (
        "not covered: evaluation sums reach the trusted server un-noised; kept in the "
        "operator files"
    )
    assert files["privacy.json"]["user"]["rounds_released"] == 2
    with np.load(tmp_path / "release" / "model.npz") as model:
        assert sorted(model.files) == sorted(server.params)
        for k in model.files:
            np.testing.assert_array_equal(model[k], server.released()[k])
    # The operator keeps the figures where they always were.
    summary = json.loads((tmp_path / "metrics.json").read_text())
    assert summary["final"] == pytest.approx(FINAL)
    assert summary["privacy"]["evaluation"] == files["privacy.json"]["evaluation"]
    assert summary["config"]["data-dir"] == str(tmp_path / "data")
    for name in ("metrics.jsonl", "messages.jsonl", "ledger.jsonl", "global_params.npz"):
        assert (tmp_path / name).exists()


def test_a_run_without_dp_releases_its_final_metrics_marked_unprotected(tmp_path: Path) -> None:
    _, outcome = run(tmp_path)
    files = release(tmp_path)
    metrics = files["metrics.json"]
    assert metrics["final"] == pytest.approx(FINAL) and outcome["final"] == pytest.approx(FINAL)
    assert "no differential privacy" in metrics["note"]
    assert files["privacy.json"]["dp"] == "none"
    # The operator's per-round log counts refusals and rejections by reason.
    entries = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [e["round"] for e in entries] == [0, 1, 2]
    assert all(e["eval_refused"] == {"evaluation": 1} for e in entries)
    assert all(e["eval_rejected"] == {} for e in entries)
    assert all(e["refused"] == {} and e["rejected_reasons"] == {} for e in entries[1:])
    assert outcome["final_eval_refused"] == {"evaluation": 1}


def test_a_local_dp_release_holds_only_the_noised_evaluations(tmp_path: Path) -> None:
    _, outcome = run(tmp_path, dp="local", **{"local-noise": 1.0})
    files = release(tmp_path)
    assert files["metrics.json"]["final"] == pytest.approx(FINAL)
    assert "noised evaluation releases only" in files["metrics.json"]["note"]
    assert files["privacy.json"]["evaluation"] == EVALUATION_COVERAGE["local"]
    assert outcome["final"] == pytest.approx(FINAL)
    entries = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(e["rejected_reasons"] == {} for e in entries[1:])  # {"local-epsilon"} is exact


def test_the_public_config_names_an_own_data_file_without_its_local_path() -> None:
    from pollinate.server.federation import public_config
    from pollinate.shared.config import FederationConfig

    cfg = FederationConfig.from_mapping(
        {"dataset": "/home/someone/private/ratings.csv", "columns": "user=u,item=i,rating=r"}
    )
    public = public_config(cfg)
    assert public["dataset"] == "ratings.csv"
    assert "/home/someone" not in str(public)


def test_a_run_without_dp_has_an_empty_ledger(tmp_path: Path) -> None:
    """Every run has a ledger; without DP nothing it released is accounted in it."""
    run(tmp_path, dp="none")
    assert (tmp_path / "ledger.jsonl").read_text() == ""
