"""One definition of how a dataset becomes the data of a task, for every trainer.

``rating``: all rows; fold ``fold`` of :func:`~pollinate.shared.data.splits.rating_split`.
``ranking``: users with fewer than 3 interactions dropped, then leave-last-out.

The centralized reference, the simulated devices and the server's catalogue all call
:func:`prepare_task`, so that they see the same users, items and splits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import numpy as np

from pollinate.shared.data.splits import (
    MIN_RANKING_INTERACTIONS,
    Split,
    leave_last_out,
    rating_split,
)
from pollinate.shared.data.types import Interactions, filter_min_interactions

if TYPE_CHECKING:
    from pollinate.shared.config import FederationConfig

Task = Literal["rating", "ranking"]


@dataclass(frozen=True)
class TaskData:
    data: Interactions
    split: Split
    task: Task


@dataclass(frozen=True)
class Catalog:
    """What the server may know: the item catalogue, not who interacted with what."""

    n_items: int
    item_genres: np.ndarray | None
    rating_scale: tuple[float, float] | None

    @property
    def rating_midpoint(self) -> float:
        if self.rating_scale is None:
            return 0.0
        return (self.rating_scale[0] + self.rating_scale[1]) / 2


def prepare_task(data: Interactions, task: Task, fold: int = 0, seed: int = 0) -> TaskData:
    if task == "rating":
        return TaskData(data, rating_split(data, fold, seed), task)
    filtered = filter_min_interactions(data, MIN_RANKING_INTERACTIONS)
    return TaskData(filtered, leave_last_out(filtered), task)


def catalog_of(data: Interactions) -> Catalog:
    return Catalog(data.n_items, data.item_genres, data.rating_scale)


def load_task(
    dataset: str,
    *,
    task: Task,
    data_dir: str | None = None,
    fold: int = 0,
    seed: int = 0,
    synthetic_users: int = 1000,
    synthetic_items: int = 500,
    columns: str | None = None,
) -> TaskData:
    """Load ``dataset`` and prepare it for ``task`` (the synthetic one seeded by ``seed``;
    your own file, a path, with the column mapping ``columns``)."""
    from pollinate.shared.data import load_dataset

    if dataset == "synthetic":
        data = load_dataset(dataset, n_users=synthetic_users, n_items=synthetic_items, seed=seed)
    else:
        data = load_dataset(dataset, data_dir=data_dir, columns=columns)
    return prepare_task(data, task, fold, seed)


def load_task_for(cfg: FederationConfig) -> TaskData:
    """The task data of a federated run's config (what the server and engine size from)."""
    return load_task(
        cfg.dataset,
        task=cfg.task,
        data_dir=cfg.data_dir,
        fold=cfg.fold,
        seed=cfg.seed,
        synthetic_users=cfg.synthetic_users,
        synthetic_items=cfg.synthetic_items,
        columns=cfg.columns,
    )
