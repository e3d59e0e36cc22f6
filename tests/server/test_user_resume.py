"""The user-level accountant across a resume, the privacy summary built from the ledger,
the default user δ, and resumed runs that would exceed their calibrated ε target.

ε is pinned against dp-accounting's PLD accountant composed directly in the test.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld
from flwr.app import Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.server.federation import Server
from pollinate.server.privacy import (
    LedgerResumeError,
    UserPrivacy,
    privacy_summary,
    restore_user_rounds,
)
from pollinate.server.user_dp import default_user_delta
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.shared.privacy.accounting import local_epsilon
from pollinate.shared.privacy.ledger import (
    LedgerError,
    LedgerWriter,
    local_event,
    read_ledger,
    recompute,
)
from pollinate.shared.tasks import Catalog
from pollinate.shared.wire import arrays_to_record, record_to_arrays

Z, Q, DELTA = 1.5, 0.5, 1e-5


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    yield


class FakeGrid:
    """Three devices: each trains to a small constant update and fails every evaluation."""

    def get_node_ids(self) -> list[int]:
        return [1, 2, 3]

    def send_and_receive(self, messages: Iterable[Message], **_: object) -> list[Message]:
        out = []
        for msg in messages:
            if msg.metadata.message_type != MessageType.TRAIN:
                out.append(Message(Error(code=1, reason="no evaluation here"), reply_to=msg))
                continue
            params = record_to_arrays(msg.content.array_records["global"])
            upd = {k: np.full_like(v, 0.01) for k, v in params.items()}
            metrics = MetricRecord({"num-examples": 3, "train-loss": 1.0, "train-seconds": 0.0})
            content = RecordDict({"update": arrays_to_record(upd), "metrics": metrics})
            out.append(Message(content, reply_to=msg))
        return out


def config(tmp_path: Path, **extra: Any) -> FederationConfig:
    values = {
        "embedding-dim": 4, "server-opt": "fedavg", "server-lr": 1.0, "out": str(tmp_path),
        "dp": "user", "user-noise": Z, "user-clip": 0.5, "sample-rate": Q, "rounds": 2,
        "user-delta": DELTA, "eval-every": 0, "progress": False,
    }  # fmt: skip
    return FederationConfig.from_mapping(values | extra)


def make_server(tmp_path: Path, **extra: Any) -> Server:
    catalog = Catalog(n_items=6, item_genres=None, rating_scale=(1.0, 5.0))
    server = Server(FakeGrid(), config(tmp_path, **extra), catalog, n_devices=3)  # type: ignore[arg-type]
    server.enroll = lambda nodes, log: list(nodes)  # type: ignore[method-assign]
    return server


def direct_user_epsilon(n_rounds: int) -> float:
    acc = pld.PLDAccountant(dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE)
    event = dp_accounting.PoissonSampledDpEvent(Q, dp_accounting.GaussianDpEvent(Z))
    for _ in range(n_rounds):
        acc.compose(event)
    return float(acc.get_epsilon(DELTA))


def user_rounds(path: Path) -> list[int]:
    return [e.round for e in read_ledger(path) if e.layer == "user"]


# --------------------------------------------------------------------------- resume
@pytest.mark.slow
def test_a_resumed_user_run_has_one_event_per_round_and_dp_accountings_epsilon(
    tmp_path: Path,
) -> None:
    make_server(tmp_path).run()
    assert user_rounds(tmp_path / "ledger.jsonl") == [1, 2]
    resumed = make_server(tmp_path, rounds=4)
    resumed.resume()
    assert resumed.start_round == 3
    assert resumed.user_privacy is not None and len(resumed.user_privacy.rounds) == 2
    outcome = resumed.run()
    events = read_ledger(tmp_path / "ledger.jsonl")
    assert user_rounds(tmp_path / "ledger.jsonl") == [1, 2, 3, 4]
    assert {(e.neighbouring, e.kind) for e in events} == {("add_remove", "train")}
    fresh = recompute(events)
    assert fresh.worst_relative_error < 1e-9
    assert fresh.user == pytest.approx(direct_user_epsilon(4), rel=1e-6)
    assert events[-1].epsilon == pytest.approx(direct_user_epsilon(4), rel=1e-6)
    assert outcome["privacy"]["user"]["epsilon"] == pytest.approx(direct_user_epsilon(4), rel=1e-6)
    # Not a fresh accountant: that would report the ε of two rounds.
    assert events[-1].epsilon > 1.2 * direct_user_epsilon(2)


def _two_round_run(tmp_path: Path) -> Path:
    make_server(tmp_path).run()
    return tmp_path / "ledger.jsonl"


@pytest.mark.slow
def test_resuming_with_a_missing_ledger_fails_instead_of_restarting_at_zero(
    tmp_path: Path,
) -> None:
    _two_round_run(tmp_path).unlink()
    resumed = make_server(tmp_path, rounds=4)
    with pytest.raises(LedgerResumeError, match=r"ledger .* is missing.*round 2.*To fix"):
        resumed.resume()


@pytest.mark.slow
def test_resuming_with_a_truncated_or_unreadable_ledger_fails(tmp_path: Path) -> None:
    ledger = _two_round_run(tmp_path)
    lines = ledger.read_text().splitlines()
    ledger.write_text(lines[0] + "\n")
    with pytest.raises(LedgerResumeError, match=r"holds 1 user-level .* round 2.*truncated"):
        make_server(tmp_path, rounds=4).resume()
    ledger.write_text(lines[0] + "\n{not json\n")
    with pytest.raises(LedgerResumeError, match=r"unreadable.*line 2"):
        make_server(tmp_path, rounds=4).resume()
    tampered = json.loads(lines[1]) | {"epsilon": 0.01}
    ledger.write_text(lines[0] + "\n" + json.dumps(tampered) + "\n")
    with pytest.raises(LedgerResumeError, match="differs from its recomputation"):
        make_server(tmp_path, rounds=4).resume()


@pytest.mark.slow
def test_a_release_after_the_checkpoint_stays_in_the_ledger_and_is_counted(
    tmp_path: Path,
) -> None:
    # Round 3 was released (ledger written first) but the run died before its
    # checkpoint: the resumed run releases round 3 again, and both count.
    ledger = _two_round_run(tmp_path)
    up = UserPrivacy.from_config(config(tmp_path), n_devices=3)
    up.rounds = [(Z, Q), (Z, Q)]
    LedgerWriter(ledger).append(up.release(3))
    resumed = make_server(tmp_path, rounds=4)
    resumed.resume()
    assert resumed.start_round == 3
    resumed.run()
    assert user_rounds(ledger) == [1, 2, 3, 3, 4]
    assert recompute(read_ledger(ledger)).user == pytest.approx(direct_user_epsilon(5), rel=1e-6)


def test_restore_reads_every_user_event_and_needs_the_checkpoints_rounds(tmp_path: Path) -> None:
    up = UserPrivacy.from_config(config(tmp_path), n_devices=3)
    ledger = tmp_path / "ledger.jsonl"
    for r in (1, 2, 3):
        LedgerWriter(ledger).append(up.release(r))
    assert restore_user_rounds(ledger, 2) == [(Z, Q)] * 3
    with pytest.raises(LedgerResumeError, match=r"holds 3 .* round 4"):
        restore_user_rounds(ledger, 4)
    assert issubclass(LedgerResumeError, PollinateError)


# --------------------------------------------------------------------------- summary
def _device_events(device: str, rounds: int, evaluate: bool) -> list[Any]:
    history: list[tuple[float, float, int]] = []
    events = []
    for r in range(1, rounds + 1):
        history.append((1.0, 0.25, 4))
        events.append(
            local_event(
                round_=r, device=device, release=(1.0, 0.25, 4), clip_norm=0.5, delta=1e-5,
                epsilon=local_epsilon(history, 1e-5),
            )
        )  # fmt: skip
        if evaluate:
            history.append((10.0, 1.0, 1))
            events.append(
                local_event(
                    round_=r, device=device, release=(10.0, 1.0, 1), clip_norm=1.0, delta=1e-5,
                    epsilon=local_epsilon(history, 1e-5), kind="evaluate",
                )
            )  # fmt: skip
    return events


def test_the_privacy_summary_is_recomputed_from_the_ledger(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.jsonl"
    writer = LedgerWriter(ledger)
    for e in [*_device_events("a", 2, evaluate=True), *_device_events("b", 1, evaluate=False)]:
        writer.append(e)
    up = UserPrivacy.from_config(config(tmp_path), n_devices=3)
    for r in (1, 2):
        writer.append(up.release(r))
    summary = privacy_summary(ledger, n_devices=4)
    direct = pld.PLDAccountant(dp_accounting.NeighboringRelation.REPLACE_ONE)
    direct.compose(dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.0)), 8)
    direct.compose(dp_accounting.GaussianDpEvent(10.0), 2)
    local = summary["local"]
    assert local["epsilon_max"] == pytest.approx(direct.get_epsilon(1e-5), rel=1e-3)
    assert local["neighbouring"] == "replace_one"
    assert local["events"] == {"train": 3, "evaluate": 2}
    assert (local["devices_accounted"], local["devices_trained"], local["devices"]) == (2, 2, 4)
    assert local["accountant"] == ["dp-accounting-pld"]
    user = summary["user"]
    assert user["epsilon"] == pytest.approx(direct_user_epsilon(2), rel=1e-6)
    assert (user["neighbouring"], user["rounds_released"]) == ("add_remove", 2)
    assert user["events"] == {"train": 2, "evaluate": 0}
    assert summary["worst_relative_error"] < 1e-9


def test_the_summary_reports_recomputed_values_and_refuses_a_tampered_ledger(
    tmp_path: Path,
) -> None:
    ledger = tmp_path / "ledger.jsonl"
    lines = [json.loads(e.to_json()) for e in _device_events("a", 2, evaluate=False)]
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    honest = privacy_summary(ledger, n_devices=1)["local"]["epsilon_max"]
    lines[-1]["epsilon"] = honest / 3  # under-reported
    ledger.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert recompute(read_ledger(ledger)).worst_relative_error > 0.5
    with pytest.raises(LedgerError, match="differs from its recomputation"):
        privacy_summary(ledger, n_devices=1)


# --------------------------------------------------------------------------- defaults
def test_the_default_user_delta_is_at_most_a_tenth_of_one_over_n_and_1e_5() -> None:
    assert default_user_delta(943) == 1e-5  # was 943^-1.1 = 5.3e-4: N·δ ≈ 0.5
    assert default_user_delta(200_000) == pytest.approx(5e-7)
    for n in (1, 10, 943, 10**4, 10**6):
        assert default_user_delta(n) <= min(1e-5, 1 / (10 * n))
    with pytest.raises(PollinateError):
        default_user_delta(0)


# --------------------------------------------------------------------------- extending a run
def _saved_run(tmp_path: Path, **values: Any) -> Path:
    from pollinate.simulations.commands.simulate import build_config

    cfg = build_config({"out": str(tmp_path), "rounds": 30} | values, None)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_flat()))
    return tmp_path


@pytest.mark.parametrize(
    "layer",
    [
        {"dp": "user", "user_epsilon": 8.0},
        {"dp": "local", "local_epsilon": 8.0},
    ],
)
def test_extending_a_run_calibrated_to_a_target_needs_a_budget(
    tmp_path: Path, layer: dict[str, Any]
) -> None:
    from pollinate.simulations.commands.simulate import build_config

    name = "user" if "user_epsilon" in layer else "local"
    run = _saved_run(tmp_path, **layer)
    with pytest.raises(PollinateError, match=rf"--{name}-epsilon-budget.*new run with --rounds 60"):
        build_config({"rounds": 60}, run)
    # The same round count, or a budget that stops the run at the target, is accepted.
    assert build_config({"rounds": 30}, run).rounds == 30
    budget = {f"{name}_epsilon_budget": 8.0}
    cfg = build_config({"rounds": 60} | budget, run)
    assert cfg.rounds == 60 and getattr(cfg, f"{name}_epsilon_budget") == 8.0
    # A fixed noise multiplier has no target to exceed: its ε simply grows, accounted.
    fixed = _saved_run(tmp_path / "fixed", dp=layer["dp"], **{f"{name}_noise": 1.0})
    assert build_config({"rounds": 60}, fixed).rounds == 60


def test_extending_a_run_after_its_devices_released_noised_evaluations_is_refused(
    tmp_path: Path,
) -> None:
    """The final evaluation (round 31 of a 30-round run) charged the devices' ledgers;
    training round 31 after it would compose out of the ledgers' (round, train before
    evaluate) order and every later ε would be recomputed wrong. The same holds for a
    run that died in round 30's evaluation, after its checkpoint of round 29."""
    from pollinate.server.checkpoint import Checkpoint, save_checkpoint
    from pollinate.simulations.commands.simulate import build_config

    def checkpointed(round_: int) -> None:
        save_checkpoint(run, Checkpoint(round_, {}, {}, None, {}))

    run = _saved_run(tmp_path, dp="local", local_noise=1.0, local_evaluation="noised")
    checkpointed(30)
    writer = LedgerWriter(run / "ledger.jsonl")
    first = local_epsilon([(1.0, 0.5, 2)], DELTA)
    writer.append(local_event(round_=30, device="4", release=(1.0, 0.5, 2), clip_norm=1.0,
                             delta=DELTA, epsilon=first))  # fmt: skip
    assert build_config({"rounds": 60}, run).rounds == 60  # no evaluation released yet
    after = local_epsilon([(1.0, 0.5, 2), (10.0, 1.0, 1)], DELTA)
    writer.append(local_event(round_=31, device="4", release=(10.0, 1.0, 1), clip_norm=1.0,
                             delta=DELTA, epsilon=after, kind="evaluate"))  # fmt: skip
    with pytest.raises(PollinateError, match=r"1 devices already released.*--rounds 60"):
        build_config({"rounds": 60}, run)
    assert build_config({"rounds": 30}, run).rounds == 30  # resuming the same run is fine
    # Died in round 30's evaluation, after its checkpoint of round 29: round 30 would be
    # trained again after that evaluation.
    run = _saved_run(tmp_path / "died", dp="local", local_noise=1.0, local_evaluation="noised")
    checkpointed(29)
    writer = LedgerWriter(run / "ledger.jsonl")
    writer.append(local_event(round_=30, device="4", release=(1.0, 0.5, 2), clip_norm=1.0,
                             delta=DELTA, epsilon=first))  # fmt: skip
    assert build_config({}, run).rounds == 30  # a lost training release: still in order
    writer.append(local_event(round_=30, device="4", release=(10.0, 1.0, 1), clip_norm=1.0,
                             delta=DELTA, epsilon=after, kind="evaluate"))  # fmt: skip
    with pytest.raises(PollinateError, match=r"after round 29 .*resuming to 29 rounds is fine"):
        build_config({}, run)


@pytest.mark.slow
def test_a_run_resumes_only_on_the_engine_that_checkpointed_it(tmp_path: Path) -> None:
    """Each engine keeps the devices' private state its own way (Flower: each device's
    folder; the fast engine: one snapshot of its shards), so the other engine would start
    every device afresh without a word."""
    from pollinate.server.checkpoint import load_checkpoint, save_checkpoint
    from pollinate.server.federation import FederationError

    make_server(tmp_path).run()
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.extra["engine"] == "flower"
    ckpt.extra["engine"] = "fast"
    save_checkpoint(tmp_path, ckpt)
    with pytest.raises(FederationError, match=r"checkpointed by the fast engine.*--engine fast"):
        make_server(tmp_path, rounds=4).resume()
    # A checkpoint written before the engine was recorded is Flower's.
    del ckpt.extra["engine"]
    save_checkpoint(tmp_path, ckpt)
    make_server(tmp_path, rounds=4).resume()
