"""A privacy-utility curve in one call: federated runs on the fast engine at each ε of one
DP layer (or both), beside the non-private federated run and the centralized reference.

Each point is a whole :func:`~pollinate.simulations.fast.run_fast` run in
``OUT/eps-E`` (``OUT/none`` for the non-private one), so every figure has its run
directory, ledger and release. The ε of a point is the one its ledger gives at the end
(``metrics.json``'s privacy block), not the target. Under local DP the figures are the
simulation oracle's (``final_source``), as in any local-DP simulation. Writes
``OUT/sweep.csv``, ``OUT/sweep.md`` and ``OUT/sweep.png``.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import ConfigError
from pollinate.simulations.fast.engine import run_fast
from pollinate.simulations.fast.pool import connect

LAYERS = ("user", "local", "both")
#: The headline metric of each task (lower is better for rating).
METRIC = {"rating": "rmse", "ranking": "ndcg@10"}


def point_config(base: dict[str, Any], layer: str, epsilon: float | None, out: Path) -> Any:
    """The config of one point: ``base`` with the layer's ε target (``None``: no DP)."""
    values = {k: v for k, v in base.items() if k != "dp"}
    values["out"] = str(out)
    values["progress"] = False
    if epsilon is None:
        values["dp"] = "none"
    else:
        values["dp"] = layer
        for one in ("user", "local") if layer == "both" else (layer,):
            values[f"{one}-epsilon"] = epsilon
    return FederationConfig.from_mapping(values)


def _spent(privacy: dict[str, Any], layer: str) -> dict[str, float | None]:
    user = (privacy.get("user") or {}).get("epsilon")
    local = (privacy.get("local") or {}).get("epsilon_max")
    return {"user_epsilon": user if layer != "local" else None,
            "local_epsilon": local if layer != "user" else None}  # fmt: skip


def centralized_reference(base: dict[str, Any], out: Path) -> dict[str, float]:
    """The centralized model's test figures on the same data (tuned defaults)."""
    from pollinate.simulations.centralized import make_config, run_centralized

    keys = {"dataset": "dataset", "data-dir": "data_dir", "model": "model", "task": "task",
            "fold": "fold", "seed": "seed", "synthetic-users": "synthetic_users",
            "synthetic-items": "synthetic_items", "columns": "columns"}  # fmt: skip
    values = {new: base[old] for old, new in keys.items() if base.get(old) is not None}
    return dict(run_centralized(make_config(**values, out=out), progress=False)["final"])


def run_sweep(
    base: dict[str, Any],
    layer: str,
    epsilons: Sequence[float],
    out: Path,
    *,
    non_private: bool = True,
    centralized: bool = True,
    ray_address: str | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run the curve; return its rows (also written to ``OUT/sweep.{csv,md,png}``)."""
    if layer not in LAYERS:
        raise ConfigError(f"--layer must be one of {LAYERS}, got {layer!r}")
    if not epsilons or any(not (math.isfinite(e) and e > 0) for e in epsilons):
        raise ConfigError(f"--epsilons must be positive numbers, got {list(epsilons)}")
    out.mkdir(parents=True, exist_ok=True)
    points: list[tuple[str, float | None]] = [(f"eps-{e:g}", e) for e in epsilons]
    if non_private:
        points.append(("none", None))
    # Check every point's config before the first run starts.
    configs = [(name, eps, point_config(base, layer, eps, out / name)) for name, eps in points]
    task = configs[0][2].task
    rows: list[dict[str, Any]] = []
    bar = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                   TimeElapsedColumn(), TextColumn("{task.fields[status]}"),
                   disable=not progress)  # fmt: skip
    started = connect(ray_address)  # one Ray for every point
    try:
        with bar:
            total = len(configs) + int(centralized)
            job = bar.add_task("sweep", total=total, status="")
            for name, eps, cfg in configs:
                bar.update(job, status=f"{name} ...")
                run_fast(cfg, ray_address=ray_address, workers=workers)
                summary = json.loads((Path(cfg.out) / "metrics.json").read_text())
                rows.append({
                    "point": name, "layer": layer if eps is not None else "none",
                    "target_epsilon": eps, **_spent(summary.get("privacy") or {}, layer),
                    **{k: v for k, v in summary["final"].items()},
                    "source": summary.get("final_source", "device evaluation sums"),
                    "run": str(cfg.out),
                })  # fmt: skip
                shown = summary["final"].get(METRIC[task])
                bar.update(job, advance=1, status=f"{name}: {METRIC[task]}={shown}")
            if centralized:
                bar.update(job, status="centralized ...")
                final = centralized_reference(base, out / "centralized")
                rows.append({"point": "centralized", "layer": "centralized", **final,
                             "source": "centralized reference",
                             "run": str(out / "centralized")})  # fmt: skip
                bar.update(job, advance=1, status="done")
    finally:
        if started:
            import ray

            ray.shutdown()
    write_table(rows, out)
    plot(rows, task, out / "sweep.png")
    return rows


def write_table(rows: list[dict[str, Any]], out: Path) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    with (out / "sweep.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)

    def cell(v: Any) -> str:
        return "" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    shown = [c for c in columns if c != "run"]
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in shown) + " |" for r in rows]
    (out / "sweep.md").write_text("\n".join(lines) + "\n")


def plot(rows: list[dict[str, Any]], task: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = METRIC[task]
    curve = [r for r in rows if r.get("target_epsilon") is not None and metric in r]
    fig, ax = plt.subplots(figsize=(6, 4))
    if curve:
        eps = [r["user_epsilon"] or r["local_epsilon"] or r["target_epsilon"] for r in curve]
        ax.plot(eps, [r[metric] for r in curve], "o-", label=f"federated, {curve[0]['layer']} DP")
        ax.set_xscale("log", base=2)
    styles = {"none": ("k--", "federated, no DP"), "centralized": ("g:", "centralized")}
    for row in rows:
        if row["point"] in styles and metric in row:
            style, label = styles[row["point"]]
            ax.axhline(row[metric], color=style[0], linestyle=style[1:], label=label)
    ax.set_xlabel("ε spent (ledger)")
    ax.set_ylabel(f"test {metric}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
