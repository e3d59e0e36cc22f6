"""Privacy math and the ledger, pinned against independent computations (dp-accounting
and Opacus called directly; the closed-form pins are in test_accounting_pins.py)."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import dp_accounting
import pytest
from dp_accounting import pld

from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.accounting import (
    calibrate_local_noise,
    calibrate_user_noise,
    canonical_history,
    history_epsilon,
    local_epsilon,
    user_epsilon,
    user_epsilon_for,
)
from pollinate.shared.privacy.ledger import (
    LedgerError,
    LedgerEvent,
    LedgerWriter,
    local_event,
    read_ledger,
    recompute,
)

logging.getLogger("absl").setLevel(logging.ERROR)
NR = dp_accounting.NeighboringRelation


def direct_pld(history: list[tuple[float, float, int]], delta: float, relation: NR) -> float:
    """dp-accounting's PLD at its default discretisation, composed in history order."""
    acc = pld.PLDAccountant(relation)
    for z, q, steps in history:
        event = dp_accounting.GaussianDpEvent(z)
        acc.compose(event if q >= 1 else dp_accounting.PoissonSampledDpEvent(q, event), steps)
    return float(acc.get_epsilon(delta))


def test_self_composition_equals_round_by_round_composition() -> None:
    once = user_epsilon_for(1.2, 0.05, 60, 1e-6)
    stepwise = user_epsilon([(1.2, 0.05)] * 60, 1e-6)
    assert stepwise == pytest.approx(once, rel=1e-6)


def test_user_rdp_agrees_with_opacus_rdp() -> None:
    # Two independent RDP implementations of the Poisson-sampled Gaussian.
    from opacus.accountants import RDPAccountant

    ours = user_epsilon_for(1.0, 0.1, 100, 1e-5, "rdp")
    opacus = RDPAccountant()
    opacus.history.append((1.0, 0.1, 100))
    assert ours == pytest.approx(opacus.get_epsilon(1e-5), rel=2e-3)
    assert ours == pytest.approx(7.9038502, rel=1e-6)  # pinned dp-accounting 0.6 value


def test_pld_is_tighter_than_rdp() -> None:
    assert user_epsilon_for(1.0, 0.1, 100, 1e-5, "pld") < user_epsilon_for(1.0, 0.1, 100, 1e-5)


def test_calibration_hits_the_target_and_the_reference_figure() -> None:
    delta = 943**-1.1
    z = calibrate_user_noise(8.0, 1.0, 30, delta)
    assert user_epsilon_for(z, 1.0, 30, delta) == pytest.approx(8.0, abs=1e-3)
    assert user_epsilon_for(z, 1.0, 30, delta) <= 8.0 + 1e-6
    assert z == pytest.approx(2.94, abs=0.01)  # CALIBRATION.md, ε = 8, 30 rounds


def test_a_fresh_accountant_each_round_under_reports() -> None:
    # The known failure of Flower's Opacus example: ε of the last round only.
    rounds = [(1.1, 0.2, 10)] * 50
    continuous = local_epsilon(rounds, 1e-5)
    fresh_each_round = local_epsilon(rounds[-1:], 1e-5)
    assert continuous > 4 * fresh_each_round
    assert continuous == pytest.approx(local_epsilon([(1.1, 0.2, 500)], 1e-5), rel=1e-9)


def test_local_epsilon_is_dp_accounting_pld_replace_one_over_a_mixed_history() -> None:
    # DP-SGD rounds of several (z, q) and evaluation releases (z_e, 1, 1), in any order.
    history = [(1.0, 0.5, 2), (10.0, 1.0, 1), (1.3, 0.25, 4), (1.0, 0.5, 3), (10.0, 1.0, 1)]
    reference = direct_pld(history, 1e-5, NR.REPLACE_ONE)
    ours = local_epsilon(history, 1e-5)
    assert reference * (1 - 1e-6) <= ours <= reference * (1 + 1e-3)
    assert local_epsilon(history[::-1], 1e-5) == ours  # composition is commutative
    # Exactly dp-accounting's PLDAccountant on the 1e-3 grid, over the merged history.
    acc = pld.PLDAccountant(NR.REPLACE_ONE, value_discretization_interval=1e-3)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.5, dp_accounting.GaussianDpEvent(1.0)), 5)
    acc.compose(dp_accounting.PoissonSampledDpEvent(0.25, dp_accounting.GaussianDpEvent(1.3)), 4)
    acc.compose(dp_accounting.GaussianDpEvent(10.0), 2)
    assert ours == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)
    assert canonical_history(history) == ((1.0, 0.5, 5), (1.3, 0.25, 4), (10.0, 1.0, 2))
    assert local_epsilon([*history, (2.0, 0.5, 0)], 1e-5) == ours  # no steps, no release


def test_local_epsilon_is_not_the_add_remove_value() -> None:
    history = [(1.0, 0.5, 20)]
    add_remove = direct_pld(history, 1e-5, NR.ADD_OR_REMOVE_ONE)
    assert local_epsilon(history, 1e-5) > 1.5 * add_remove
    assert history_epsilon(history, 1e-5, "add_remove") == pytest.approx(add_remove, rel=1e-6)


def test_noise_too_weak_to_account_gives_an_infinite_local_epsilon() -> None:
    # z = 1e-3 would exhaust memory in the PLD; no guarantee is claimed instead.
    assert local_epsilon([(1.0, 0.5, 2), (1e-3, 0.5, 1)], 1e-5) == float("inf")
    assert calibrate_local_noise(1e6, 1e-5, 0.5, 10) == 0.3  # never below the floor


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_replace_one_refuses_every_accountant_but_pld(accountant: str) -> None:
    with pytest.raises(ConfigError, match="replace-one"):
        local_epsilon([(1.0, 0.5, 2)], 1e-5, accountant)
    with pytest.raises(ConfigError, match="replace-one"):
        history_epsilon([(1.0, 0.5, 2)], 1e-5, "replace_one", "rdp")


def test_local_calibration_meets_the_target_in_seconds() -> None:
    for target, delta, rate, steps in [(8.0, 1e-5, 0.5, 60), (2.0, 1e-6, 0.04, 2500)]:
        calibrate_local_noise.cache_clear()
        start = time.perf_counter()
        z = calibrate_local_noise(target, delta, rate, steps)
        assert time.perf_counter() - start < 5.0
        eps = direct_pld([(z, rate, steps)], delta, NR.REPLACE_ONE)
        assert 0.99 * target <= eps <= target * (1 + 1e-6)
        # slightly less noise would exceed the target (the smallest such z, to 0.1%)
        assert local_epsilon([(0.995 * z, rate, steps)], delta) > target


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError):
        user_epsilon_for(0.0, 0.1, 10, 1e-5)
    with pytest.raises(ConfigError):
        user_epsilon_for(1.0, 1.5, 10, 1e-5)
    with pytest.raises(ConfigError):
        local_epsilon([(1.0, 0.1, 10)], 1.0)
    with pytest.raises(ConfigError):
        local_epsilon([(1.0, 0.1, -1)], 1e-5)
    with pytest.raises(ConfigError):
        local_epsilon([(0.0, 0.1, 3)], 1e-5)


def _events(n_rounds: int) -> list[LedgerEvent]:
    """Device "7" trains every round and releases an evaluation every other; the server
    releases one user-level round each round."""
    events = []
    history: list[tuple[float, float, int]] = []
    for r in range(1, n_rounds + 1):
        history.append((1.0, 0.25, 4))
        events.append(
            local_event(
                round_=r, device="7", release=(1.0, 0.25, 4), clip_norm=0.5, delta=1e-5,
                epsilon=local_epsilon(history, 1e-5),
            )
        )  # fmt: skip
        if r % 2 == 0:
            history.append((8.0, 1.0, 1))
            events.append(
                local_event(
                    round_=r, device="7", release=(8.0, 1.0, 1), clip_norm=1.0, delta=1e-5,
                    epsilon=local_epsilon(history, 1e-5), kind="evaluate",
                )
            )  # fmt: skip
        events.append(
            LedgerEvent(
                layer="user", unit="user", round=r, mechanism="Gaussian sum, Poisson clients",
                noise_multiplier=2.0, sample_rate=0.5, steps=1, clip_norm=1.0, delta=1e-4,
                accountant="dp-accounting-rdp", neighbouring="add_remove",
                epsilon=user_epsilon_for(2.0, 0.5, r, 1e-4),
            )
        )  # fmt: skip
    return events


def test_local_events_say_replace_one_pld_and_their_kind() -> None:
    train, evaluate = (e for e in _events(2) if e.layer == "local" and e.round == 2)
    assert (train.neighbouring, train.kind, train.accountant) == (
        "replace_one", "train", "dp-accounting-pld",
    )  # fmt: skip
    assert (evaluate.kind, evaluate.sample_rate, evaluate.steps) == ("evaluate", 1.0, 1)
    with pytest.raises(LedgerError, match="plain Gaussian"):
        local_event(
            round_=1, device="7", release=(8.0, 0.5, 1), clip_norm=1.0, delta=1e-5,
            epsilon=1.0, kind="evaluate",
        )  # fmt: skip
    with pytest.raises(ConfigError, match="replace-one"):
        local_event(
            round_=1, device="7", release=(1.0, 0.5, 1), clip_norm=1.0, delta=1e-5,
            epsilon=1.0, accountant="rdp",
        )  # fmt: skip


def test_the_ledger_alone_recomputes_every_epsilon(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "ledger.jsonl")
    for e in _events(6):
        writer.append(e)
    events = read_ledger(tmp_path / "ledger.jsonl")
    assert len(events) == 15 and events[0].versions["opacus"]
    result = recompute(events)
    assert result.worst_relative_error < 1e-9
    local = [e for e in events if e.layer == "local"]
    assert result.local["7"] == pytest.approx(local[-1].epsilon)
    assert result.user == pytest.approx(events[-1].epsilon)
    # Independently: dp-accounting's PLD, replace-one, over the 6 training rounds and
    # the 3 evaluation releases of the device.
    direct = direct_pld([(1.0, 0.25, 24), (8.0, 1.0, 3)], 1e-5, NR.REPLACE_ONE)
    assert direct * (1 - 1e-6) <= result.local["7"] <= direct * (1 + 1e-3)


def test_recompute_composes_training_before_evaluation_within_a_round(tmp_path: Path) -> None:
    events = _events(2)
    shuffled = events[::-1]  # evaluate before train in the file
    assert recompute(shuffled).worst_relative_error < 1e-9


def test_a_tampered_epsilon_is_caught(tmp_path: Path) -> None:
    events = _events(3)
    lines = [json.loads(e.to_json()) for e in events]
    lines[-1]["epsilon"] /= 2  # under-reported
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert recompute(read_ledger(path)).worst_relative_error > 0.4


def test_a_local_event_that_claims_add_remove_is_caught(tmp_path: Path) -> None:
    # The device's own ε (replace-one) recorded under the add/remove label: recompute
    # uses the relation each event names, and the devices' events must agree on it.
    lines = [json.loads(e.to_json()) for e in _events(2) if e.layer == "local"]
    for line in lines:
        line["neighbouring"] = "add_remove"
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert recompute(read_ledger(path)).worst_relative_error > 0.3
    lines[0]["neighbouring"] = "replace_one"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    with pytest.raises(LedgerError, match="different relations"):
        recompute(read_ledger(path))


def test_an_old_ledger_reads_as_add_remove_training_and_recomputes_with_opacus(
    tmp_path: Path,
) -> None:
    from opacus.accountants import RDPAccountant

    def opacus_rdp(rounds: int) -> float:
        acc = RDPAccountant()
        acc.history.extend([(1.0, 0.25, 4)] * rounds)
        return float(acc.get_epsilon(1e-5))

    # Written before `neighbouring` and `kind` existed: Opacus RDP, add/remove.
    first = {
        "layer": "local", "unit": "interaction", "round": 1, "device": "7", "mechanism": "m",
        "noise_multiplier": 1.0, "sample_rate": 0.25, "steps": 4, "clip_norm": 0.5,
        "delta": 1e-5, "accountant": "opacus-rdp", "epsilon": opacus_rdp(1),
    }  # fmt: skip
    old = first | {"round": 2, "epsilon": opacus_rdp(2)}
    path = tmp_path / "ledger.jsonl"
    path.write_text(json.dumps(first) + "\n" + json.dumps(old) + "\n")
    events = read_ledger(path)
    assert {(e.neighbouring, e.kind) for e in events} == {("add_remove", "train")}
    assert recompute(events).worst_relative_error < 1e-9


def test_unknown_relations_and_kinds_are_refused(tmp_path: Path) -> None:
    line = json.loads(_events(1)[0].to_json())
    path = tmp_path / "ledger.jsonl"
    for key, value in (("neighbouring", "swap"), ("kind", "peek")):
        path.write_text(json.dumps(line | {key: value}) + "\n")
        with pytest.raises(LedgerError, match=f"line 1.*{key}"):
            read_ledger(path)


def test_a_malformed_ledger_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(_events(1)[0].to_json() + "\n{not json\n")
    with pytest.raises(LedgerError, match="line 2"):
        read_ledger(path)
