"""The membership-inference statistics of the audit, pinned against direct computations."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from pollinate.audit.membership import (
    CURVE_FPR,
    auc,
    roc_curve,
    summarize,
    tpr_at,
    tradeoff_bound,
)
from pollinate.server.audit_material import Holdout, UploadProbe, item_row_norms


def pairwise_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The AUC by its definition: over every (member, non-member) pair."""
    pos, neg = scores[labels], scores[~labels]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_equals_the_pairwise_definition_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, 80).astype(float)  # many ties
    labels = rng.random(80) < 0.3
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels), abs=1e-12)


def test_roc_of_a_small_example() -> None:
    scores = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    labels = np.array([True, True, False, False, True])
    fpr, tpr = roc_curve(scores, labels)
    # Thresholds: >=0.9, >=0.8 (a tie of one member and one non-member), >=0.3, >=0.1.
    assert fpr.tolist() == [0, 0, 0.5, 1, 1]
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1])
    assert tpr_at(fpr, tpr, 0.01) == pytest.approx(1 / 3)
    assert auc(scores, labels) == pytest.approx(pairwise_auc(scores, labels))


def test_the_auc_standard_error_follows_hanley_and_mcneil() -> None:
    from pollinate.audit.membership import auc_standard_error

    assert auc_standard_error(1.0, 50, 50) == 0.0
    # Worked by hand: A = 0.5, 100 and 100: Q1 = 1/3, Q2 = 1/3.
    expected = math.sqrt((0.25 + 99 * (1 / 3 - 0.25) * 2) / 10_000)
    assert auc_standard_error(0.5, 100, 100) == pytest.approx(expected)


def test_perfect_and_useless_attacks() -> None:
    labels = np.array([True] * 50 + [False] * 50)
    perfect = summarize(np.r_[np.ones(50), np.zeros(50)], labels, None)
    assert perfect["auc"] == 1.0 and perfect["tpr_at_1pct_fpr"] == 1.0
    useless = summarize(np.zeros(100), labels, None)
    assert useless["auc"] == 0.5 and useless["tpr_at_1pct_fpr"] == 0.0


def test_tradeoff_bound_is_the_dp_hypothesis_testing_region() -> None:
    eps, delta = 1.0, 1e-5
    bound = tradeoff_bound(eps, delta)
    for a, b in zip(CURVE_FPR, bound, strict=True):
        expected = min(1.0, math.exp(eps) * a + delta, 1 - math.exp(-eps) * (1 - delta - a))
        assert b == pytest.approx(max(0.0, expected))
    # ε = 0 (and δ = 0) allows nothing above chance.
    assert tradeoff_bound(0.0, 0.0) == pytest.approx(list(CURVE_FPR))


def test_an_attack_above_the_curve_is_flagged() -> None:
    labels = np.array([True] * 200 + [False] * 200)
    leaky = np.r_[np.ones(200), np.zeros(200)]
    assert summarize(leaky, labels, (1.0, 1e-5))["under_bound"] is False
    rng = np.random.default_rng(0)
    assert summarize(rng.random(400), labels, (1.0, 1e-5))["under_bound"] is True


def test_item_row_norms_cover_every_item_array() -> None:
    update = {
        "item_factors.weight": np.array([[3.0, 4.0], [0.0, 0.0], [1.0, 0.0]]),
        "item_bias.weight": np.array([[0.0], [2.0], [0.0]]),
        "global_bias.weight": np.array([[9.0]]),
    }
    assert item_row_norms(update, 3).tolist() == pytest.approx([5.0, 2.0, 1.0])


def test_the_probe_keeps_each_devices_first_upload_once(tmp_path: Path) -> None:
    probe = UploadProbe(n_items=2, cap=2)
    up = {"item_bias.weight": np.array([[1.0], [0.0]])}
    probe.record(1, 7, up)
    probe.record(2, 7, {"item_bias.weight": np.array([[0.0], [5.0]])})  # not the first
    probe.record(2, 8, up)
    probe.record(3, 9, up)  # over the cap
    probe.save(tmp_path)
    again = UploadProbe(n_items=2, cap=2)
    again.load_existing(tmp_path)
    assert again.keys == [7, 8] and again.rounds == [1, 2]
    assert again.rows[0].tolist() == [1.0, 0.0]


def test_holdout_is_a_secret_share_and_refuses_degenerate_draws() -> None:
    held = Holdout.draw(0.2, 1000, np.random.default_rng(0))
    assert 150 < len(held.users) < 250
    with pytest.raises(Exception, match="non-members"):
        Holdout.draw(0.01, 3, np.random.default_rng(0))


def test_the_auditor_can_point_the_run_at_its_data_elsewhere(tmp_path: Path) -> None:
    import json

    from pollinate.shared.errors import PollinateError
    from pollinate.simulations.oracle import run_config

    (tmp_path / "config.json").write_text(
        json.dumps({"dataset": "/gone/ratings.csv", "columns": "user=u,item=i,rating=r"})
    )
    moved = run_config(tmp_path, {"dataset": str(tmp_path / "ratings.csv"), "data-dir": None})
    assert moved.dataset == str(tmp_path / "ratings.csv")
    assert run_config(tmp_path).dataset == "/gone/ratings.csv"
    with pytest.raises(PollinateError, match="data-location"):
        run_config(tmp_path, {"dp": "none"})


def test_a_run_with_held_out_users_but_no_kept_uploads_reports_the_server_attack_not_run(
    tmp_path: Path,
) -> None:
    """A run made with --audit-holdout only: the server attack says why it did not run."""
    import json

    from pollinate.audit.membership import membership_blocks

    (tmp_path / "config.json").write_text(
        json.dumps({"dataset": "synthetic", "synthetic-users": 50, "synthetic-items": 20})
    )
    Holdout.draw(0.2, 50, np.random.default_rng(0)).save(tmp_path)
    blocks = membership_blocks(tmp_path, {})
    assert blocks["server"]["auc"] is None
    assert "kept no uploads" in blocks["server"]["status"]
    assert blocks["release"]["status"].startswith("not run")  # no released model either
