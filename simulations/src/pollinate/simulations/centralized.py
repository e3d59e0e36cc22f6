"""The centralized reference: one model trained on all training data at once.

It is the ceiling every federated or private run is measured against. The config is a
pydantic model validated once; hyper-parameters left unset take the tuned defaults of
``(dataset, model, task)`` (see :data:`TUNED_DEFAULTS`), else the generic defaults of
``(model, task)``. Both were chosen on validation data only.

Training early-stops on the validation rows (patience, best weights restored). With
``refit`` (the default), a fresh model is then trained on training +
validation rows for the best number of epochs, and that model is tested; the report
keeps the early-stopped model's test metrics too (``final_early_stopped``). The tested
model's weights go to ``OUT/model.npz``; :func:`rescore_centralized` tests them again,
optionally with the users' private vectors scaled (0 removes them).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch import nn

from pollinate.shared.data.splits import Split
from pollinate.shared.data.types import Interactions
from pollinate.shared.environment import record_environment
from pollinate.shared.errors import ConfigError
from pollinate.shared.models import RecModel, build_model
from pollinate.shared.progress import step
from pollinate.shared.tasks import prepare_task
from pollinate.shared.training import (
    RANKING_LOSSES,
    RATING_LOSSES,
    FitResult,
    build_examples,
    context_rows,
    evaluate_ranking,
    evaluate_rating,
    fit,
    get_loss,
    n_examples,
    ranking_examples,
    train_epoch,
)

Task = Literal["rating", "ranking"]
ModelName = Literal["mf", "interest"]
LossName = Literal["mse", "bpr", "sampled_softmax", "shared_softmax", "softmax"]
OptimizerName = Literal["sgd", "adam"]

#: The metrics reported under ``final`` for each task.
FINAL_METRICS: dict[str, tuple[str, ...]] = {
    "rating": ("rmse", "mae"),
    "ranking": (
        "hr@10",
        "ndcg@10",
        "recall@20",
        "mrr@10",
        "coverage@10",
        "novelty@10",
        "diversity@10",
    ),
}


class HyperParams(BaseModel):
    """Fully resolved training hyper-parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    epochs: int = Field(ge=1)
    patience: int = Field(ge=0)
    dim: int = Field(ge=1)
    lr: float = Field(gt=0)
    reg: float = Field(ge=0)
    weight_decay: float = Field(ge=0)
    loss: LossName
    n_negatives: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    optimizer: OptimizerName
    history_len: int = Field(ge=1)
    n_layers: int = Field(ge=1)
    n_heads: int = Field(ge=1)
    dropout: float = Field(ge=0, lt=1)
    init_std: float = Field(gt=0)
    refit: bool


_BASE: dict[str, Any] = {
    "patience": 3,
    "weight_decay": 0.0,
    "n_negatives": 100,
    "history_len": 50,
    "n_layers": 1,
    "n_heads": 1,
    "dropout": 0.2,
    "refit": True,
}

#: Early-stopping patience of the ranking references. Validation NDCG@10 moves by a
#: median 0.004-0.006 (up to 0.018) from one epoch to the next while still rising; with
#: patience 3 the ML-100K ``interest`` reference stopped at epoch 2 (seed 1) or 7 (seed
#: 0), while with 6 seed 1 ran to epoch 26 (best 20) and tested 0.1345 against 0.0848
#: (simulations/benchmarks/RESULTS.md, eighth session).
RANKING_PATIENCE = 6

#: The trained (tested) model's weights in a run directory, one array per parameter.
MODEL_FILE = "model.npz"

#: Generic defaults by (model, task).
GENERIC_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("mf", "rating"): _BASE
    | {
        "epochs": 100,
        "patience": 6,
        "dim": 128,
        "lr": 0.01,
        "reg": 0.1,
        "loss": "mse",
        "batch_size": 256,
        "optimizer": "sgd",
        "init_std": 0.02,
    },
    ("mf", "ranking"): _BASE
    | {
        "epochs": 50,
        "patience": RANKING_PATIENCE,
        "dim": 64,
        "lr": 2e-3,
        "reg": 0.0,
        "loss": "shared_softmax",
        "n_negatives": 1000,
        "batch_size": 512,
        "optimizer": "adam",
        "init_std": 0.1,
    },
    ("interest", "rating"): _BASE
    | {
        "epochs": 50,
        "dim": 64,
        "lr": 1e-3,
        "reg": 0.05,
        "loss": "mse",
        "batch_size": 256,
        "optimizer": "adam",
        "init_std": 0.02,
    },
    ("interest", "ranking"): _BASE
    | {
        "epochs": 50,
        "patience": RANKING_PATIENCE,
        "dim": 64,
        "lr": 2e-3,
        "reg": 0.0,
        "loss": "shared_softmax",
        "n_negatives": 1000,
        "batch_size": 512,
        "optimizer": "adam",
        "init_std": 0.02,
        "dropout": 0.3,
    },
}

#: Defaults tuned on validation data, by (dataset, model, task); they override the
#: generic ones. See simulations/benchmarks/RESULTS.md.
TUNED_DEFAULTS: dict[tuple[str, str, str], dict[str, Any]] = {
    ("ml-latest-small", "mf", "rating"): {"dim": 64, "reg": 0.05},
    # Beauty histories are short (8.9 interactions a user on average).
    ("amazon-beauty", "interest", "ranking"): {"history_len": 20},
}


class CentralizedConfig(BaseModel):
    """What a centralized run needs. Hyper-parameters left ``None`` are defaulted."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dataset: str
    #: Your own file's column mapping (``user=COL,item=COL,...``; see FederationConfig).
    columns: str | None = None
    data_dir: Path | None = None
    #: ``synthetic`` only: its size (``None``: the generator's default, 1,000 x 500); set,
    #: the data is generated from ``seed``, as a federated run's is (tasks.load_task).
    synthetic_users: int | None = Field(None, ge=50)
    synthetic_items: int | None = Field(None, ge=10)
    model: ModelName = "mf"
    task: Task = "rating"
    fold: int = Field(0, ge=0, le=4)
    seed: int = 0
    out: Path | None = None
    epochs: int | None = Field(None, ge=1)
    patience: int | None = Field(None, ge=0)
    dim: int | None = Field(None, ge=1)
    lr: float | None = Field(None, gt=0)
    reg: float | None = Field(None, ge=0)
    weight_decay: float | None = Field(None, ge=0)
    loss: LossName | None = None
    n_negatives: int | None = Field(None, ge=1)
    batch_size: int | None = Field(None, ge=1)
    optimizer: OptimizerName | None = None
    history_len: int | None = Field(None, ge=1)
    n_layers: int | None = Field(None, ge=1)
    n_heads: int | None = Field(None, ge=1)
    dropout: float | None = Field(None, ge=0, lt=1)
    init_std: float | None = Field(None, gt=0)
    refit: bool | None = None
    threads: int = Field(1, ge=1)

    @model_validator(mode="after")
    def _check_loss(self) -> CentralizedConfig:
        allowed = RATING_LOSSES if self.task == "rating" else RANKING_LOSSES
        if self.loss is not None and self.loss not in allowed:
            raise ValueError(
                f"loss {self.loss!r} does not fit the {self.task} task; use one of {allowed}"
            )
        return self

    def hyper_params(self) -> tuple[HyperParams, str]:
        """The resolved hyper-parameters and where their defaults came from."""
        values = dict(GENERIC_DEFAULTS[(self.model, self.task)])
        source = f"generic ({self.model}, {self.task})"
        tuned = TUNED_DEFAULTS.get((self.dataset, self.model, self.task))
        if tuned is not None:
            values |= tuned
            source = f"tuned ({self.dataset}, {self.model}, {self.task})"
        explicit = {k: getattr(self, k) for k in HyperParams.model_fields}
        values |= {k: v for k, v in explicit.items() if v is not None}
        return HyperParams(**values), source


def make_config(**values: Any) -> CentralizedConfig:
    """Validate ``values`` into a config; every problem becomes one :class:`ConfigError`."""
    try:
        return CentralizedConfig(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid centralized config: {problems}") from None


def load_data(config: CentralizedConfig) -> Interactions:
    from pollinate.shared.data import load_dataset

    if config.dataset == "synthetic" and (config.synthetic_users or config.synthetic_items):
        return load_dataset(
            "synthetic",
            n_users=config.synthetic_users or 1000,
            n_items=config.synthetic_items or 500,
            seed=config.seed,
        )
    return load_dataset(config.dataset, config.data_dir, columns=config.columns)


def _build(
    config: CentralizedConfig, hp: HyperParams, data: Interactions, rows: np.ndarray
) -> RecModel:
    """A fresh model; ``μ`` starts at the mean rating of the training ``rows``."""
    mean = 0.0
    if config.task == "rating" and data.ratings is not None:
        mean = float(np.mean(data.ratings[rows]))
    kwargs: dict[str, Any] = {
        "n_users": data.n_users,
        "n_items": data.n_items,
        "item_genres": data.item_genres,
        "dim": hp.dim,
        "init_std": hp.init_std,
        "global_mean": mean,
        "generator": torch.Generator().manual_seed(config.seed),
    }
    if config.model == "interest":
        kwargs |= {
            "history_len": hp.history_len,
            "n_layers": hp.n_layers,
            "n_heads": hp.n_heads,
            "dropout": hp.dropout,
        }
    return build_model(config.model, **kwargs)


def _optimizer(model: nn.Module, hp: HyperParams) -> torch.optim.Optimizer:
    if hp.optimizer == "adam":
        return torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    # SGD on the *summed* per-example loss, as Surprise's SVD: the learning rate is per
    # example. μ sees every example of a batch, so it steps on the batch mean instead.
    shared = [p for n, p in model.named_parameters() if n.startswith("global_bias")]
    rest = [p for n, p in model.named_parameters() if not n.startswith("global_bias")]
    groups: list[dict[str, Any]] = [
        {"params": rest},
        {"params": shared, "lr": hp.lr / hp.batch_size},
    ]
    return torch.optim.SGD(
        groups,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
    )


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        disable=not enabled,
    )


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads inside the block (small models, shared machines)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class _Trainer:
    """Builds, trains and tests models for one resolved config on one split."""

    def __init__(
        self, config: CentralizedConfig, hp: HyperParams, data: Interactions, split: Split
    ) -> None:
        self.config, self.hp, self.data, self.split = config, hp, data, split
        self.loss_fn = get_loss(hp.loss, reg=hp.reg, n_negatives=hp.n_negatives)
        self.reduction: Literal["sum", "mean"] = "sum" if hp.optimizer == "sgd" else "mean"

    def new_model(self, rows: np.ndarray) -> RecModel:
        return _build(self.config, self.hp, self.data, rows)

    def fit(self, bar: Progress) -> tuple[RecModel, FitResult]:
        """Train on the training rows with early stopping on the validation rows."""
        config, hp, data, split = self.config, self.hp, self.data, self.split
        model = self.new_model(split.train)
        history_len = int(getattr(model, "history_len", 0))
        train = build_examples(data, split.train, history_len=history_len)
        mode: Literal["min", "max"]
        if config.task == "rating":
            valid = build_examples(
                data, split.valid, context_rows=split.train, history_len=history_len
            )

            def evaluate(m: nn.Module) -> dict[str, float]:
                return evaluate_rating(m, valid, rating_scale=data.rating_scale)

            monitor, mode = "rmse", "min"
        else:
            valid = ranking_examples(model, data, split, "valid")

            def evaluate(m: nn.Module) -> dict[str, float]:
                return evaluate_ranking(m, data, split, "valid", examples=valid, full=False)

            monitor, mode = "ndcg@10", "max"
        task_id = bar.add_task("train", total=hp.epochs * n_examples(train), status="")

        def on_epoch(row: dict[str, float]) -> None:
            bar.update(
                task_id, status=f"epoch {int(row['epoch'])} valid {monitor} {row[monitor]:.4f}"
            )

        result = fit(
            model,
            train,
            self.loss_fn,
            _optimizer(model, hp),
            torch.Generator().manual_seed(config.seed),
            epochs=hp.epochs,
            evaluate=evaluate,
            monitor=monitor,
            mode=mode,
            patience=hp.patience,
            batch_size=hp.batch_size,
            reduction=self.reduction,
            on_batch=lambda n: bar.advance(task_id, n),
            on_epoch=on_epoch,
        )
        bar.update(task_id, completed=hp.epochs * n_examples(train))
        return model, result

    def refit(self, epochs: int, bar: Progress) -> RecModel:
        """Train a fresh model on training + validation rows for ``epochs`` epochs."""
        rows = np.concatenate([self.split.train, self.split.valid])
        model = self.new_model(rows)
        history_len = int(getattr(model, "history_len", 0))
        examples = build_examples(self.data, rows, history_len=history_len)
        optimizer = _optimizer(model, self.hp)
        generator = torch.Generator().manual_seed(self.config.seed)
        task_id = bar.add_task("refit", total=epochs * n_examples(examples), status="")
        for _ in range(epochs):
            train_epoch(
                model,
                examples,
                self.loss_fn,
                optimizer,
                generator,
                batch_size=self.hp.batch_size,
                reduction=self.reduction,
                on_batch=lambda n: bar.advance(task_id, n),
            )
        return model

    def test(self, model: RecModel) -> dict[str, float]:
        data, split = self.data, self.split
        if self.config.task == "rating":
            test = build_examples(
                data,
                split.test,
                context_rows=context_rows(split, "test"),
                history_len=int(getattr(model, "history_len", 0)),
            )
            scores = evaluate_rating(model, test, rating_scale=data.rating_scale)
        else:
            scores = evaluate_ranking(model, data, split, "test")
        return {k: scores[k] for k in FINAL_METRICS[self.config.task] if k in scores}


def run_centralized(config: CentralizedConfig, progress: bool = True) -> dict[str, Any]:
    """Train with early stopping on validation, optionally refit on train + validation
    for the best number of epochs, test, and write ``OUT/metrics.json``."""
    t0 = time.perf_counter()
    hp, source = config.hyper_params()
    with step(f"loading {config.dataset}", enabled=progress):
        data = load_data(config)
    if config.task == "rating" and data.ratings is None:
        raise ConfigError(
            f"{config.dataset} has no ratings (implicit feedback); use --task ranking"
        )
    prepared = prepare_task(data, config.task, config.fold, config.seed)
    data, split = prepared.data, prepared.split
    trainer = _Trainer(config, hp, data, split)
    with _progress(progress) as bar, _torch_threads(config.threads), torch.random.fork_rng():
        # Dropout draws from torch's global RNG; seed it only inside this fork.
        torch.manual_seed(config.seed)
        model, result = trainer.fit(bar)
        early = trainer.test(model)
        if hp.refit:
            torch.manual_seed(config.seed)
            model = trainer.refit(max(result.best_epoch, 1), bar)
            final = trainer.test(model)
        else:
            final = early
    resolved = config.model_dump(mode="json") | hp.model_dump() | {"defaults_from": source}
    report: dict[str, Any] = {
        "dataset": config.dataset,
        "model": config.model,
        "task": config.task,
        "fold": config.fold,
        "final": final,
        "config": resolved,
        "history": result.history,
        "best_epoch": result.best_epoch,
        "best_valid": result.best,
        "final_early_stopped": early,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "wall_time_s": round(time.perf_counter() - t0, 2),
    }
    if config.out is not None:
        config.out.mkdir(parents=True, exist_ok=True)
        weights = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        np.savez(config.out / MODEL_FILE, **weights)
        (config.out / "metrics.json").write_text(json.dumps(report, indent=2) + "\n")
        record_environment(config.out)
    return report


def rescore_centralized(out: Path, private_scale: float = 1.0) -> dict[str, float]:
    """Test the model a centralized run saved in ``out`` again.

    With ``private_scale`` the user's private vector (``user_interest`` or
    ``user_factors``, the parameters a device would keep) is first multiplied by it;
    0 removes it, which measures how much of the score the shared parameters carry.
    """
    report = json.loads((out / "metrics.json").read_text())
    resolved = report["config"]
    config = make_config(
        **{k: resolved[k] for k in CentralizedConfig.model_fields if k in resolved}
    )
    hp, _ = config.hyper_params()
    data = load_data(config)
    prepared = prepare_task(data, config.task, config.fold, config.seed)
    trainer = _Trainer(config, hp, prepared.data, prepared.split)
    model = trainer.new_model(prepared.split.train)
    with np.load(out / MODEL_FILE) as saved:
        state = {k: torch.as_tensor(saved[k]) for k in saved.files}
    model.load_state_dict(state)
    private = model.LOCAL_PREFIXES[0]
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith(private):
                param.mul_(private_scale)
    with _torch_threads(config.threads):
        return trainer.test(model)


def load_user_rows(
    model: RecModel, weights: Mapping[str, np.ndarray], user: int, private_scale: float = 1.0
) -> None:
    """Copy a centralized model's ``weights`` (``model.npz``) into a one-user ``model`` (a
    device's): every global array whole, the private arrays' row ``user``, the private
    vector multiplied by ``private_scale``. Raises if the two models differ in shape."""
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(weights))
    if missing:
        raise ConfigError(f"the centralized weights lack {missing}; not the same model")
    private = set(model.local_parameter_names())
    with torch.no_grad():
        for name, param in params.items():
            value = torch.as_tensor(weights[name])
            if name in private:
                value = value[user : user + 1]
                if name.startswith(model.LOCAL_PREFIXES[0]):
                    value = value * private_scale
            if value.shape != param.shape:
                raise ConfigError(
                    f"{name}: the centralized model has shape {tuple(value.shape)}, the "
                    f"device model {tuple(param.shape)}; use a run of the same architecture "
                    "(embedding-dim, history-len)"
                )
            param.copy_(value)
