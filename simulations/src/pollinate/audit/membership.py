"""Membership-inference attacks of ``pollinate audit``: one per threat model.

- **server** (a curious server, Yuan et al., WWW 2023, "Interaction-level membership
  inference attack against federated recommender systems"): from one device's decoded
  upload, guess which items the device trained on. The attacker's score of an item is the
  norm of that item's rows in the upload, divided by the upload's largest row norm; the
  members are the device's training items, the non-members every other item of the
  catalogue. Local DP must defeat it; user-level DP trusts the server and, by design,
  does not (the server sees raw updates).
- **release** (anyone holding the released model): guess whether a user took part. The
  attacker folds the user in against the released item table (a ridge fit of a user
  vector and bias to the user's training ratings) and scores the user by the gap between the
  error on the user's held-out ratings and on the training ratings: a member's training
  ratings shaped the item table, so they fit better than a non-member's. The members are
  the run's devices, the non-members the users that ``--audit-holdout`` kept out.
  User-level DP must defeat it.

Both report AUC, TPR at 1% FPR and the ROC curve, beside the largest TPR that the claimed
(ε, δ) allows at each FPR: TPR ≤ min(e^ε·FPR + δ, 1 − e^(−ε)·(1 − δ − FPR)) (Kairouz, Oh
and Viswanath 2015), for one record's test; a pooled ROC is a mixture of such tests and so
lies under the same concave curve. The attacks are simulation-only: labelling their
guesses needs every device's data.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import rankdata

from pollinate.client.device_data import DeviceIndex, with_validation_in_training
from pollinate.server.audit_material import Holdout, load_uploads
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.simulations.oracle import run_config, run_device, run_devices

#: The FPR grid on which ROC curves are stored (log-spaced, then linear to 1).
CURVE_FPR = np.unique(np.concatenate([np.logspace(-4, 0, 41), np.linspace(0.05, 1, 20)]))
#: Ridge strength of the release attack's fold-in.
FOLD_IN_RIDGE = 1.0


def roc_curve(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` at every threshold, highest score first; ties move together."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    if labels.all() or not labels.any():
        raise ValueError("an ROC curve needs both members and non-members")
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each tie group
    tp = np.cumsum(y)[last]
    fp = np.cumsum(~y)[last]
    tpr = np.r_[0.0, tp / y.sum()]
    fpr = np.r_[0.0, fp / (~y).sum()]
    return fpr, tpr


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """The probability that a random member outscores a random non-member (ties count
    one half): the Mann-Whitney statistic, from ranks."""
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels, bool)
    n1, n0 = int(labels.sum()), int((~labels).sum())
    if not n1 or not n0:
        raise ValueError("an AUC needs both members and non-members")
    ranks = rankdata(scores)  # average ranks over ties, 1-based
    return float((ranks[labels].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def auc_standard_error(a: float, members: int, non_members: int) -> float:
    """The AUC's standard error (Hanley and McNeil 1982), to judge a figure near 0.5."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (members - 1) * (q1 - a * a) + (non_members - 1) * (q2 - a * a)) / (
        members * non_members
    )
    return math.sqrt(max(var, 0.0))


def tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    """The best TPR among thresholds whose FPR is at most ``target``."""
    ok = fpr <= target + 1e-12
    return float(tpr[ok].max())


def on_grid(fpr: np.ndarray, tpr: np.ndarray) -> list[float]:
    """The ROC's TPR at each FPR of :data:`CURVE_FPR` (the best threshold at or below)."""
    return [tpr_at(fpr, tpr, float(x)) for x in CURVE_FPR]


def tradeoff_bound(epsilon: float, delta: float, fpr: np.ndarray | None = None) -> list[float]:
    """The largest TPR an (ε, δ)-DP mechanism allows at each FPR (default :data:`CURVE_FPR`)."""
    a = CURVE_FPR if fpr is None else np.asarray(fpr, np.float64)
    bound = np.minimum(math.exp(epsilon) * a + delta, 1 - math.exp(-epsilon) * (1 - delta - a))
    return [float(x) for x in np.clip(bound, 0.0, 1.0)]


def crosses_bound(
    fpr: np.ndarray,
    tpr: np.ndarray,
    members: int,
    non_members: int,
    epsilon: float,
    delta: float,
    beta: float = 0.05,
) -> bool:
    """Whether the attack provably beats what (ε, δ) allows, at confidence 1 − β.

    A finite sample's ROC can cross the curve by chance (at FPR below 1/non-members, one
    lucky member is a TPR of 1/members). So at each stored FPR the best threshold's
    Clopper–Pearson lower bound on its TPR is compared with the curve at the upper bound
    on its FPR, Bonferroni-corrected over the grid.
    """
    from scipy.stats import beta as beta_dist

    level = beta / (2 * len(CURVE_FPR))
    for target in CURVE_FPR:
        ok = fpr <= target + 1e-12
        i = int(np.flatnonzero(ok)[np.argmax(tpr[ok])])
        tp, fp = round(tpr[i] * members), round(fpr[i] * non_members)
        tpr_low = float(beta_dist.ppf(level, tp, members - tp + 1)) if tp > 0 else 0.0
        fpr_high = (
            float(beta_dist.ppf(1 - level, fp + 1, non_members - fp)) if fp < non_members else 1.0
        )
        if tpr_low > tradeoff_bound(epsilon, delta, np.array([fpr_high]))[0] + 1e-12:
            return True
    return False


def summarize(
    scores: np.ndarray, labels: np.ndarray, claimed: tuple[float, float] | None
) -> dict[str, Any]:
    """AUC, TPR at 1% FPR, the ROC on the stored grid and, for a claimed (ε, δ), the bound
    and whether the ROC stays under it."""
    fpr, tpr = roc_curve(scores, labels)
    curve = on_grid(fpr, tpr)
    members, non_members = int(np.sum(labels)), int(np.sum(~np.asarray(labels, bool)))
    block: dict[str, Any] = {
        "auc": (a := auc(scores, labels)),
        "auc_se": auc_standard_error(a, members, non_members),
        "tpr_at_1pct_fpr": tpr_at(fpr, tpr, 0.01),
        "members": members,
        "non_members": non_members,
        "roc": {"fpr": [float(x) for x in CURVE_FPR], "tpr": curve},
        "claimed": None,
        "bound_tpr": None,
        "under_bound": None,
    }
    if claimed is not None and math.isfinite(claimed[0]):
        bound = tradeoff_bound(*claimed)
        block["claimed"] = {"epsilon": claimed[0], "delta": claimed[1]}
        block["bound_tpr"] = bound
        block["under_bound"] = not crosses_bound(fpr, tpr, members, non_members, *claimed)
    return block


# -- (a) the curious server ---------------------------------------------------------
def server_attack_scores(
    run_dir: Path, cfg: FederationConfig, index: DeviceIndex
) -> tuple[np.ndarray, np.ndarray, int]:
    """Scores and labels of every (device, item) pair of the kept uploads, and the number
    of uploads. Only the real catalogue's items count (not the audit's canary items)."""
    keys, _, rows = load_uploads(run_dir)
    n_real = index.task_data.data.n_items
    scores: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for key, norms in zip(keys, rows, strict=True):
        device = run_device(run_dir, cfg, index, int(key))
        trained = device.data.items[device.split.train]
        member = np.zeros(n_real, bool)
        member[trained[trained < n_real]] = True
        norms = np.asarray(norms[:n_real], np.float64)
        top = float(norms.max())
        scores.append(norms / top if top > 0 else norms)
        labels.append(member)
    if not scores:
        raise ValueError("the run kept no uploads")
    return np.concatenate(scores), np.concatenate(labels), len(scores)


# -- (b) anyone with the released model ----------------------------------------------
def release_attack_scores(
    run_dir: Path, cfg: FederationConfig, index: DeviceIndex, released: Mapping[str, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Each user's fold-in generalisation gap (higher: more likely a member) and whether
    the user took part."""

    def array(name: str) -> np.ndarray | None:
        for key in (f"{name}.weight", name):
            if key in released:
                return np.asarray(released[key], np.float64)
        return None

    factors_or_none = array("item_factors")
    if cfg.task != "rating" or factors_or_none is None:
        raise ValueError(
            f"the release attack folds users into a rating model's item table; this run is "
            f"{cfg.task} with {cfg.model}"
        )
    held = Holdout.load(run_dir)
    if held is None:
        raise ValueError("the run held no users out (make it with --audit-holdout)")
    factors = factors_or_none
    item_bias, global_bias = array("item_bias"), array("global_bias")
    bias = np.zeros(len(factors)) if item_bias is None else item_bias[:, 0]
    scale = index.task_data.data.rating_scale
    # A model that does not learn its global mean keeps it at the scale's midpoint.
    midpoint = 0.0 if scale is None else (scale[0] + scale[1]) / 2
    glob = midpoint if global_bias is None else float(global_bias.ravel()[0])
    dim = factors.shape[1]
    members = set(run_devices(run_dir, cfg, index.n_devices))
    scores, labels = [], []
    for u in range(index.n_devices):
        # The user's own rows (not the audit's canary rows), as the run split them.
        device = index.device(u)
        if cfg.train_on_validation:
            device = with_validation_in_training(device)
        data, split = device.data, device.split
        assert data.ratings is not None
        train, test = split.train, split.test
        if len(train) == 0 or len(test) == 0:
            continue
        items_tr, items_te = data.items[train], data.items[test]
        r_tr = data.ratings[train] - glob - bias[items_tr]
        # The user's vector and bias (the model's private parameters), fitted by ridge.
        v = np.c_[factors[items_tr], np.ones(len(items_tr))]
        vec = np.linalg.solve(v.T @ v + FOLD_IN_RIDGE * np.eye(dim + 1), v.T @ r_tr)
        err_tr = float(np.mean((v @ vec - r_tr) ** 2))
        r_te = data.ratings[test] - glob - bias[items_te]
        v_te = np.c_[factors[items_te], np.ones(len(items_te))]
        err_te = float(np.mean((v_te @ vec - r_te) ** 2))
        scores.append(err_te - err_tr)
        labels.append(u in members)
    return np.asarray(scores), np.asarray(labels, bool)


def membership_blocks(
    run_dir: Path,
    claimed: Mapping[str, tuple[float, float] | None],
    data: Mapping[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """The ``membership_inference`` blocks of ``run_dir`` (``server`` and ``release``),
    each with a ``status``; ``claimed`` maps each threat to the (ε, δ) that is meant to
    bound it (None: no layer of the run covers it)."""
    from pollinate.shared.tasks import load_task_for

    cfg = run_config(run_dir, data)
    index = DeviceIndex(load_task_for(cfg))
    out: dict[str, dict[str, Any]] = {}
    try:
        scores, labels, uploads = server_attack_scores(run_dir, cfg, index)
        block = summarize(scores, labels, claimed.get("server"))
        block["uploads"] = uploads
        block["status"] = "run: " + SERVER_METHOD
        out["server"] = block
    except (ValueError, OSError, PollinateError) as exc:
        out["server"] = _not_run(f"not run: {exc}")
    try:
        with np.load(run_dir / "global_params.npz") as saved:
            released = {k: saved[k] for k in saved.files}
        scores, labels = release_attack_scores(run_dir, cfg, index, released)
        block = summarize(scores, labels, claimed.get("release"))
        block["status"] = "run: " + RELEASE_METHOD
        out["release"] = block
    except (ValueError, OSError, PollinateError) as exc:
        out["release"] = _not_run(f"not run: {exc}")
    return out


def _not_run(status: str) -> dict[str, Any]:
    return {"auc": None, "tpr_at_1pct_fpr": None, "status": status}


SERVER_METHOD = (
    "a curious server scores each item of a device's first upload by the norm of its rows "
    "(over the upload's largest) and guesses the items the device trained on (Yuan et al. "
    "2023); members: the device's training items; non-members: every other item"
)
RELEASE_METHOD = (
    "the released item table, a ridge fold-in of each user's training ratings, and the gap "
    "between the user's held-out and training errors; members: the run's devices; "
    "non-members: users held out by a secret coin (--audit-holdout)"
)
