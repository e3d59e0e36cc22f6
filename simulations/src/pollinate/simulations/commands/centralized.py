"""``pollinate centralized``: train the centralized reference and write metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app


@app.command("centralized")
def centralized(
    dataset: Annotated[
        str,
        typer.Option(
            help="synthetic, ml-100k, ml-latest-small, amazon-beauty, or the path of your "
            "own .csv/.tsv/.parquet file"
        ),
    ],
    out: Annotated[Path, typer.Option(help="Output directory (metrics.json is written there)")],
    columns: Annotated[
        str | None,
        typer.Option(
            help="Your file's columns, user=COL,item=COL,rating=COL,timestamp=COL "
            "(left out: detected from the header)"
        ),
    ] = None,
    synthetic_users: Annotated[
        int | None, typer.Option(help="Users of the synthetic dataset (default 1,000)")
    ] = None,
    synthetic_items: Annotated[
        int | None, typer.Option(help="Items of the synthetic dataset (default 500)")
    ] = None,
    model: Annotated[str, typer.Option(help="mf or interest")] = "mf",
    task: Annotated[str, typer.Option(help="rating or ranking")] = "rating",
    data_dir: Annotated[Path | None, typer.Option(help="Folder holding the datasets")] = None,
    fold: Annotated[int, typer.Option(help="Rating-task fold, 0..4")] = 0,
    seed: Annotated[int, typer.Option(help="Seed of the split and the training")] = 0,
    epochs: Annotated[int | None, typer.Option(help="Most epochs (early stopping)")] = None,
    patience: Annotated[int | None, typer.Option(help="Epochs without improvement")] = None,
    dim: Annotated[int | None, typer.Option(help="Embedding dimension")] = None,
    lr: Annotated[float | None, typer.Option(help="Learning rate")] = None,
    reg: Annotated[float | None, typer.Option(help="L2 on the rows each example touches")] = None,
    weight_decay: Annotated[float | None, typer.Option(help="Decoupled weight decay")] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="mse (rating); bpr, sampled_softmax, shared_softmax, softmax (ranking)"),
    ] = None,
    negatives: Annotated[int | None, typer.Option(help="Negatives per example")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Examples per step")] = None,
    optimizer: Annotated[str | None, typer.Option(help="sgd or adam")] = None,
    history_len: Annotated[int | None, typer.Option(help="History items the encoder reads")] = None,
    layers: Annotated[int | None, typer.Option(help="Attention blocks (interest)")] = None,
    heads: Annotated[int | None, typer.Option(help="Attention heads (interest)")] = None,
    dropout: Annotated[float | None, typer.Option(help="Encoder dropout (interest)")] = None,
    refit: Annotated[
        bool | None,
        typer.Option(
            "--refit/--no-refit",
            help="Retrain on train + validation for the best number of epochs before testing",
        ),
    ] = None,
    threads: Annotated[int, typer.Option(help="Torch intra-op threads")] = 1,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Train a model on all training data at once: the ceiling for federated runs.

    Unset hyper-parameters take the defaults tuned for (dataset, model, task).
    """
    from pollinate.simulations.centralized import make_config, run_centralized

    err = Console(stderr=True)
    try:
        config = make_config(
            dataset=dataset,
            columns=columns,
            synthetic_users=synthetic_users,
            synthetic_items=synthetic_items,
            data_dir=data_dir,
            model=model,
            task=task,
            fold=fold,
            seed=seed,
            out=out,
            epochs=epochs,
            patience=patience,
            dim=dim,
            lr=lr,
            reg=reg,
            weight_decay=weight_decay,
            loss=loss,
            n_negatives=negatives,
            batch_size=batch_size,
            optimizer=optimizer,
            history_len=history_len,
            n_layers=layers,
            n_heads=heads,
            dropout=dropout,
            refit=refit,
            threads=threads,
        )
        report = run_centralized(config, progress=progress)
    except PollinateError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    final = ", ".join(f"{k} {v:.4f}" for k, v in report["final"].items())
    Console().print(
        f"{report['model']}/{report['task']} on {report['dataset']} (test): {final}\n"
        f"wrote {out / 'metrics.json'}",
        highlight=False,
    )
