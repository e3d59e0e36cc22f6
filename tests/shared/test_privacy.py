"""Privacy math pinned against independent computations (dp-accounting vs Opacus)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pollinate.shared.errors import ConfigError
from pollinate.shared.privacy.accounting import (
    calibrate_user_noise,
    local_epsilon,
    user_epsilon,
    user_epsilon_for,
)
from pollinate.shared.privacy.ledger import (
    LedgerError,
    LedgerEvent,
    LedgerWriter,
    read_ledger,
    recompute,
)

logging.getLogger("absl").setLevel(logging.ERROR)


def test_self_composition_equals_round_by_round_composition() -> None:
    once = user_epsilon_for(1.2, 0.05, 60, 1e-6)
    stepwise = user_epsilon([(1.2, 0.05)] * 60, 1e-6)
    assert stepwise == pytest.approx(once, rel=1e-6)


def test_user_rdp_agrees_with_opacus_rdp() -> None:
    # Two independent RDP implementations of the Poisson-sampled Gaussian.
    ours = user_epsilon_for(1.0, 0.1, 100, 1e-5, "rdp")
    opacus = local_epsilon([(1.0, 0.1, 100)], 1e-5, "rdp")
    assert ours == pytest.approx(opacus, rel=2e-3)
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


def test_local_rdp_is_exactly_opacus_rdp_accountant_over_a_mixed_history() -> None:
    from opacus.accountants import RDPAccountant

    history = [(1.0, 0.5, 2), (1.0, 0.5, 2), (1.3, 0.25, 4), (0.9, 0.5, 3), (1.0, 0.5, 1)]
    for end in range(1, len(history) + 1):
        acc = RDPAccountant()
        for z, q, steps in history[:end]:
            for _ in range(steps):
                acc.step(noise_multiplier=z, sample_rate=q)
        assert local_epsilon(history[:end], 1e-5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-12)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ConfigError):
        user_epsilon_for(0.0, 0.1, 10, 1e-5)
    with pytest.raises(ConfigError):
        user_epsilon_for(1.0, 1.5, 10, 1e-5)
    with pytest.raises(ConfigError):
        local_epsilon([(1.0, 0.1, 10)], 1.0)


def _events(n_rounds: int) -> list[LedgerEvent]:
    events = []
    history: list[tuple[float, float, int]] = []
    for r in range(1, n_rounds + 1):
        history.append((1.0, 0.25, 4))
        events.append(
            LedgerEvent(
                layer="local", unit="interaction", round=r, device="7", mechanism="DP-SGD",
                noise_multiplier=1.0, sample_rate=0.25, steps=4, clip_norm=0.5, delta=1e-5,
                accountant="opacus-rdp", epsilon=local_epsilon(history, 1e-5),
            )
        )  # fmt: skip
        events.append(
            LedgerEvent(
                layer="user", unit="user", round=r, mechanism="Gaussian sum, Poisson clients",
                noise_multiplier=2.0, sample_rate=0.5, steps=1, clip_norm=1.0, delta=1e-4,
                accountant="dp-accounting-rdp",
                epsilon=user_epsilon_for(2.0, 0.5, r, 1e-4),
            )
        )  # fmt: skip
    return events


def test_the_ledger_alone_recomputes_every_epsilon(tmp_path: Path) -> None:
    writer = LedgerWriter(tmp_path / "ledger.jsonl")
    for e in _events(6):
        writer.append(e)
    events = read_ledger(tmp_path / "ledger.jsonl")
    assert len(events) == 12 and events[0].versions["opacus"]
    result = recompute(events)
    assert result.worst_relative_error < 1e-9
    assert result.local["7"] == pytest.approx(events[-2].epsilon)
    assert result.user == pytest.approx(events[-1].epsilon)


def test_a_tampered_epsilon_is_caught(tmp_path: Path) -> None:
    events = _events(3)
    lines = [json.loads(e.to_json()) for e in events]
    lines[-1]["epsilon"] /= 2  # under-reported
    path = tmp_path / "ledger.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert recompute(read_ledger(path)).worst_relative_error > 0.4


def test_a_malformed_ledger_line_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "ledger.jsonl"
    path.write_text(_events(1)[0].to_json() + "\n{not json\n")
    with pytest.raises(LedgerError, match="line 2"):
        read_ledger(path)
