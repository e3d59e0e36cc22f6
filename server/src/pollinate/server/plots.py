"""PNG plots of a run's per-round metrics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def plot_history(history: Sequence[dict[str, Any]], path: Path) -> None:
    """Training loss and every evaluation metric against the round."""
    eval_keys = sorted({k for h in history for k in (h.get("eval") or {})})
    panels = ["train_loss", *eval_keys]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for ax, key in zip(axes[0], panels, strict=True):
        if key == "train_loss":
            pts = [
                (h["round"], h["train_loss"]) for h in history if h.get("train_loss") is not None
            ]
        else:
            pts = [(h["round"], h["eval"][key]) for h in history if key in (h.get("eval") or {})]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
