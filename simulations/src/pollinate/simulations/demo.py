"""``pollinate demo`` (``make demo``): what federation and privacy cost, in one table.

On the synthetic dataset (planted factors, 1-5 star ratings) it runs, each into its own
folder of the demo directory:

1. a **no-federation baseline**: every device predicts its own mean training rating
   (nothing leaves the device, nothing is learned from other users);
2. the **centralized reference**: ``pollinate centralized``, all ratings in one place;
3. a **federated run without DP**: ``pollinate simulate`` (Flower, one device per user);
4. the **same run with user-level DP** at ε (secure noise, canary devices for the audit);
5. ``pollinate audit`` on the private run.

It writes ``summary.md`` (the table, with the command of each row), ``summary.json`` and
``summary.png`` (the federated runs' validation RMSE by round, with the centralized and
baseline RMSE as reference lines), and prints the table and the audit report's path.
Each run is a subprocess of the ``pollinate`` command, exactly what a user would type.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.shared.errors import PollinateError

#: The ``pollinate`` command of this interpreter (works without the console script).
POLLINATE = (sys.executable, "-m", "pollinate.simulations.cli")


@dataclass(frozen=True)
class DemoSettings:
    """What the demo runs. The defaults take a few minutes on two cores."""

    out: Path = Path("runs/demo")
    users: int = 1000
    items: int = 500
    rounds: int = 10
    sample_rate: float = 0.2
    epsilon: float = 8.0
    canaries: int = 200
    eval_every: int = 5
    seed: int = 0
    centralized_epochs: int | None = None
    audit: bool = True


@dataclass(frozen=True)
class Row:
    """One line of the demo's table."""

    name: str
    rmse: float
    mae: float
    privacy: str
    command: str


def per_user_mean_baseline(users: int, items: int, seed: int, fold: int = 0) -> dict[str, float]:
    """Test RMSE/MAE of predicting each user's mean training rating (a user without
    training ratings predicts the rating scale's midpoint): what a device does alone."""
    from pollinate.shared.tasks import load_task

    task = load_task(
        "synthetic",
        task="rating",
        fold=fold,
        seed=seed,
        synthetic_users=users,
        synthetic_items=items,
    )
    data, split = task.data, task.split
    assert data.ratings is not None
    ratings = np.asarray(data.ratings, dtype=np.float64)
    train, test = np.asarray(split.train), np.asarray(split.test)
    sums = np.bincount(data.users[train], weights=ratings[train], minlength=data.n_users)
    counts = np.bincount(data.users[train], minlength=data.n_users)
    low, high = data.rating_scale or (float(ratings.min()), float(ratings.max()))
    means = np.where(counts > 0, sums / np.maximum(counts, 1), (low + high) / 2)
    err = means[data.users[test]] - ratings[test]
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def run_file(settings: DemoSettings, private: bool) -> dict[str, Any]:
    """The run-file keys of the demo's federated run (private: user-level DP + canaries)."""
    values: dict[str, Any] = {
        "dataset": "synthetic",
        "synthetic-users": settings.users,
        "synthetic-items": settings.items,
        "task": "rating",
        "model": "mf",
        "rounds": settings.rounds,
        "sample-rate": settings.sample_rate,
        "eval-every": settings.eval_every,
        # Every device answers the validation rounds: a 20% sample makes the curve jump.
        "eval-sample-rate": 1.0,
        "seed": settings.seed,
        "out": str(settings.out / ("private" if private else "federated")),
    }
    if private:
        # The user-level recipe of the measured ML-100K runs: clip S = 0.1, FedAvg with a
        # large server step (the mean of clipped updates is small), no learned global mean.
        values |= {
            "dp": "user",
            "user-epsilon": settings.epsilon,
            "user-clip": 0.1,
            "server-opt": "fedavg",
            "server-lr": 50.0,
            "audit-canaries": settings.canaries,
        }
    return values


def _toml(values: dict[str, Any]) -> str:
    lines = []
    for key, value in values.items():
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, str):
            text = json.dumps(value)
        else:
            text = repr(value)
        lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


def _run(args: Sequence[str], log: Path, what: str) -> int:
    """Run ``pollinate ARGS``: on a terminal with its live progress bars, else streaming
    its output to stderr and into ``log``."""
    shown = "pollinate " + shlex.join(args)
    print(f"\n== {what}\n$ {shown}", file=sys.stderr, flush=True)
    on_terminal = sys.stderr.isatty()
    if on_terminal:
        log.write_text(f"$ {shown}\n(run on a terminal: its output went there)\n")
    with log.open("a" if on_terminal else "w") as fh:
        proc = subprocess.Popen(
            [*POLLINATE, *args],
            stdout=None if on_terminal else subprocess.PIPE,
            stderr=None if on_terminal else subprocess.STDOUT,
            text=True,
        )
        try:
            if proc.stdout is not None:
                for line in proc.stdout:
                    fh.write(line)
                    sys.stderr.write(line)
            return proc.wait()
        finally:
            # Interrupted (Ctrl-C, a test's time limit): do not leave the run behind.
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _final(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "metrics.json"
    if not path.exists():
        raise PollinateError(f"{path} was not written; see {run_dir}.log")
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def _curve(run_dir: Path) -> list[tuple[int, float]]:
    points = []
    path = run_dir / "metrics.jsonl"
    if path.exists():
        for line in path.read_text().splitlines():
            entry = json.loads(line)
            rmse = (entry.get("eval") or {}).get("rmse")
            if rmse is not None:
                points.append((int(entry["round"]), float(rmse)))
    return points


def plot_summary(
    rows: Sequence[Row], curves: dict[str, list[tuple[int, float]]], path: Path
) -> None:
    """Validation RMSE by round of the federated runs (all devices), their final test RMSE
    (a star at the last round), and every other row's test RMSE as a reference line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    finals = {row.name: row.rmse for row in rows}
    for name, points in curves.items():
        if points:
            xs, ys = zip(*points, strict=True)
            (line,) = ax.plot(xs, ys, marker="o", markersize=3, label=f"{name} (validation)")
            ax.plot(
                [xs[-1]],
                [finals[name]],
                marker="*",
                markersize=11,
                linestyle="none",
                color=line.get_color(),
                label=f"{name}: test {finals[name]:.3f}",
            )
    styles = iter(["--", ":", "-."])
    for row in rows:
        if row.name not in curves:
            ax.axhline(row.rmse, linestyle=next(styles, "--"), color="grey", linewidth=1)
            ax.annotate(
                f"{row.name}: {row.rmse:.3f}",
                (0, row.rmse),
                textcoords="offset points",
                xytext=(2, 3),
                fontsize=8,
                color="dimgrey",
            )
    ax.set_xlabel("round")
    ax.set_ylabel("RMSE (lower is better)")
    ax.set_title("Synthetic ratings: federated runs against the references")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def summary_markdown(rows: Sequence[Row]) -> str:
    """The demo's table: one row per model, with its test metric, privacy and command."""
    lines = [
        "| model | test RMSE | test MAE | privacy | command |",
        "|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.rmse:.4f} | {row.mae:.4f} | {row.privacy} | `{row.command}` |"
        )
    return "\n".join(lines) + "\n"


ROW_NAMES = (
    "centralized reference",
    "federated, no DP",
    "federated, user-level DP",
    "no federation (per-user mean)",
)


def run_demo(settings: DemoSettings) -> dict[str, Any]:
    """Run the demo (see the module); returns what ``summary.json`` holds."""
    out = settings.out
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows: list[Row] = []

    # 2. The centralized reference.
    central_dir = out / "centralized"
    central_args = [
        "centralized",
        "--dataset",
        "synthetic",
        "--synthetic-users",
        str(settings.users),
        "--synthetic-items",
        str(settings.items),
        "--seed",
        str(settings.seed),
        "--out",
        str(central_dir),
    ]
    if settings.centralized_epochs is not None:
        central_args += ["--epochs", str(settings.centralized_epochs)]
    if _run(central_args, out / "centralized.log", "centralized reference (all data pooled)"):
        raise PollinateError(f"the centralized reference failed; see {out / 'centralized.log'}")
    central = _final(central_dir)["final"]
    rows.append(
        Row(
            ROW_NAMES[0],
            central["rmse"],
            central["mae"],
            "none: all ratings on one server",
            "pollinate " + shlex.join(central_args),
        )
    )

    # 3 and 4. The federated runs, from run files the user can rerun.
    curves: dict[str, list[tuple[int, float]]] = {}
    epsilon = None
    for private in (False, True):
        name = ROW_NAMES[2] if private else ROW_NAMES[1]
        values = run_file(settings, private)
        config = out / ("private.toml" if private else "federated.toml")
        config.write_text(_toml(values))
        args = ["simulate", "--config", str(config)]
        run_dir = Path(values["out"])
        if _run(args, out / f"{run_dir.name}.log", name):
            raise PollinateError(f"the {name} run failed; see {out / (run_dir.name + '.log')}")
        summary = _final(run_dir)
        final = summary["final"]
        if private:
            user = summary["privacy"]["user"]
            epsilon = float(user["epsilon"])
            privacy = (
                f"user-level ε = {epsilon:.2f}, δ = {user['delta']:g} (z = "
                f"{user['noise_multiplier']:.2f}); raw data stays on devices"
            )
        else:
            privacy = "raw data stays on devices; updates are not private (no ε)"
        rows.append(
            Row(name, final["rmse"], final["mae"], privacy, "pollinate " + shlex.join(args))
        )
        curves[name] = _curve(run_dir)

    # 1. The no-federation baseline (computed here: it needs no training).
    base = per_user_mean_baseline(settings.users, settings.items, settings.seed)
    rows.append(
        Row(
            ROW_NAMES[3],
            base["rmse"],
            base["mae"],
            "nothing leaves the device",
            "computed by pollinate demo (each device's mean training rating)",
        )
    )

    report_path = None
    verdict = None
    if settings.audit:
        report_dir = out / "audit-report"
        audit_args = ["audit", str(out / "private"), "--out", str(report_dir)]
        code = _run(audit_args, out / "audit.log", "pollinate audit on the private run")
        json_path = report_dir / "report.json"
        if not json_path.exists():
            raise PollinateError(f"pollinate audit failed (exit {code}); see {out / 'audit.log'}")
        verdict = json.loads(json_path.read_text()).get("verdict")
        report_path = str(report_dir / "report.html")

    table = summary_markdown(rows)
    (out / "summary.md").write_text(
        "# Pollinate demo: synthetic ratings, "
        f"{settings.users:,} devices, {settings.rounds} rounds\n\n{table}"
        + (f"\nAudit report ({verdict}): {report_path}\n" if report_path else "")
    )
    plot_summary(rows, curves, out / "summary.png")
    result: dict[str, Any] = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
        "rows": [asdict(r) for r in rows],
        "epsilon": epsilon,
        "audit": {"verdict": verdict, "report": report_path},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
