"""``pollinate simulate``: a federated run on Flower's simulation runtime."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

console = Console(stderr=True)


def build_config(options: dict[str, Any], resume: Path | None) -> FederationConfig:
    """The run's config: CLI options, or the saved config of the run being resumed.

    A resumed run keeps its saved config; it may be extended to more rounds and given
    ε budgets. A run whose noise was calibrated to an ε target (``--user-epsilon``,
    ``--local-epsilon``) for R rounds spends that target in R rounds, so extending it
    would spend more: that is refused unless the layer's ε budget is set, which then
    stops the run (or the device) before the budget is exceeded.
    """
    given = {k.replace("_", "-"): v for k, v in options.items() if v is not None}
    if resume is not None:
        saved_path = resume / "config.json"
        if not saved_path.exists():
            raise PollinateError(
                f"{saved_path} does not exist; --resume takes the run directory of an earlier run"
            )
        saved = json.loads(saved_path.read_text())
        allowed = {"progress", "rounds", "user-epsilon-budget", "local-epsilon-budget"}
        unexpected = sorted(set(given) - allowed)
        if unexpected:
            raise PollinateError(
                f"--resume continues a run with its saved config; drop {unexpected} (a resumed "
                f"run may only change {sorted(allowed)})"
            )
        saved_rounds = int(saved.get("rounds", 0))
        saved.update(given)
        cfg = FederationConfig.from_mapping(saved)
        if cfg.rounds > saved_rounds:
            for layer in ("user", "local"):
                target = getattr(cfg, f"{layer}_epsilon")
                if target is not None and getattr(cfg, f"{layer}_epsilon_budget") is None:
                    raise PollinateError(
                        f"--resume to {cfg.rounds} rounds would exceed --{layer}-epsilon "
                        f"{target}: the {layer}-level noise was calibrated to spend ε = {target} "
                        f"over {saved_rounds} rounds, and every further round adds to it. "
                        f"Either pass --{layer}-epsilon-budget B to stop once ε would exceed B "
                        f"(B = {target} keeps the target; training then ends when it is "
                        f"spent), or start a new run with --rounds {cfg.rounds} so that the "
                        "noise is calibrated for all of them"
                    )
        return cfg
    cfg = FederationConfig.from_mapping(given)
    if cfg.device_state_dir is None:
        # Simulated devices keep their private state on "disk", as a phone would, so
        # that an interrupted run can resume exactly.
        cfg = cfg.model_copy(update={"device_state_dir": str(Path(cfg.out) / "devices")})
    return cfg


@app.command("simulate")
def simulate(
    dataset: Annotated[
        str | None, typer.Option(help="synthetic, ml-100k, ml-latest-small, amazon-beauty, ...")
    ] = None,
    data_dir: Annotated[
        str | None, typer.Option(help="Folder holding the dataset folders (or POLLINATE_DATA_DIR).")
    ] = None,
    model: Annotated[str | None, typer.Option(help="mf or interest")] = None,
    task: Annotated[str | None, typer.Option(help="rating or ranking")] = None,
    fold: Annotated[int | None, typer.Option(help="Rating-task fold, 0-4")] = None,
    rounds: Annotated[int | None, typer.Option(help="Federated rounds")] = None,
    sample_rate: Annotated[
        float | None, typer.Option(help="Poisson sampling rate q of devices per round")
    ] = None,
    local_epochs: Annotated[int | None, typer.Option(help="Local epochs per round")] = None,
    max_local_steps: Annotated[
        int | None,
        typer.Option(help="Most device steps per round (caps heavy users; default: no cap)"),
    ] = None,
    train_on_validation: Annotated[
        bool | None,
        typer.Option(
            "--train-on-validation/--no-train-on-validation",
            help="Devices train on their validation rows too (the analog of the centralized "
            "refit on train + validation; needs --eval-every 0)",
        ),
    ] = None,
    server_opt: Annotated[str | None, typer.Option(help="fedavg, fedadam or fedadagrad")] = None,
    server_lr: Annotated[
        float | None, typer.Option(help="Server learning rate (default per optimizer)")
    ] = None,
    server_lr_encoder: Annotated[
        float | None,
        typer.Option(help="interest: server rate of the encoder (default: --server-lr)"),
    ] = None,
    server_tau: Annotated[
        float | None, typer.Option(help="FedAdam/FedAdagrad's tau (default 1e-3)")
    ] = None,
    server_ema: Annotated[
        float | None,
        typer.Option(
            help="Evaluate and release an exponential moving average of the server's "
            "iterates with this beta (default: the last iterate)"
        ),
    ] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(
            help="equal (default: each device once) or examples (weighted by training "
            "examples; not with user-level DP)"
        ),
    ] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="Latent dimension")] = None,
    learn_global_mean: Annotated[
        bool | None,
        typer.Option(
            "--learn-global-mean/--no-learn-global-mean",
            help="mf: train the global mean (turn off under user-level DP with FedAvg)",
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size")] = None,
    lr_global: Annotated[
        float | None, typer.Option(help="Device learning rate of global parameters")
    ] = None,
    lr_local: Annotated[
        float | None, typer.Option(help="Device learning rate of private parameters")
    ] = None,
    lr_encoder: Annotated[
        float | None,
        typer.Option(help="interest: device learning rate of the encoder (default: lr-global)"),
    ] = None,
    encoder_max_grad_norm: Annotated[
        float | None,
        typer.Option(help="interest: largest norm of the encoder's gradient in a device step"),
    ] = None,
    device_optimizer: Annotated[
        str | None,
        typer.Option(
            help="sgd (default), adam, or adam-encoder (Adam for the interest encoder at "
            "--lr-encoder, SGD for the rest); the lr-* options are its step sizes"
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 on the rows an example touches")
    ] = None,
    private_weight_decay: Annotated[
        float | None,
        typer.Option(help="Decay of the private parameters alone at every device step"),
    ] = None,
    loss: Annotated[
        str | None, typer.Option(help="mse, bpr, sampled_softmax, softmax (not with --dp local)")
    ] = None,
    negatives: Annotated[
        int | None, typer.Option(help="Negatives per example (ranking losses)")
    ] = None,
    private_refit: Annotated[
        bool | None,
        typer.Option(
            "--private-refit/--no-private-refit",
            help="mf: refit the private vector to the global tables each round (ratings: ridge; "
            "rankings: Newton on the full softmax) "
            "(default on for ratings, off under --dp local)",
        ),
    ] = None,
    refit_reg: Annotated[
        float | None, typer.Option(help="L2 weight of the private refit (per row)")
    ] = None,
    adapt_epochs: Annotated[
        int | None,
        typer.Option(
            help="Before every evaluation each device fine-tunes a copy of its model for this "
            "many epochs on its training rows, and scores with it (default 0: off; not with "
            "--dp local)"
        ),
    ] = None,
    adapt_lr_scale: Annotated[
        float | None,
        typer.Option(help="The adaptation's rates, times the device's rates (default 0.5)"),
    ] = None,
    history_len: Annotated[
        int | None, typer.Option(help="Behaviour history length (interest)")
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help="interest: encoder dropout on devices (default 0.2)")
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Evaluate every N rounds (0: never)")
    ] = None,
    eval_sample_rate: Annotated[
        float | None, typer.Option(help="Share of devices evaluated every N rounds")
    ] = None,
    synthetic_users: Annotated[
        int | None, typer.Option(help="Users of the synthetic dataset")
    ] = None,
    synthetic_items: Annotated[
        int | None, typer.Option(help="Items of the synthetic dataset")
    ] = None,
    num_devices: Annotated[
        int | None, typer.Option(help="Devices to wait for (default: one per user)")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of sampling, initialisation and splits")
    ] = None,
    dp: Annotated[
        str | None, typer.Option(help="Differential privacy: none, local, user or both")
    ] = None,
    local_noise: Annotated[
        float | None, typer.Option(help="Device DP-SGD noise multiplier z")
    ] = None,
    local_epsilon: Annotated[
        float | None,
        typer.Option(help="Device ε target over the planned rounds (z calibrated per device)"),
    ] = None,
    local_clip: Annotated[float | None, typer.Option(help="Per-example clip norm C")] = None,
    local_epsilon_budget: Annotated[
        float | None, typer.Option(help="A device stops training beyond this ε")
    ] = None,
    local_delta: Annotated[
        float | None, typer.Option(help="Device δ (default min(1e-5, 1/(10·n)))")
    ] = None,
    local_accountant: Annotated[
        str | None, typer.Option(help="pld (dp-accounting, replace-one): the only one")
    ] = None,
    local_evaluation: Annotated[
        str | None,
        typer.Option(
            help="Local-DP devices' answer to evaluation requests: refuse (default; the "
            "simulation scores the released model itself) or noised (a Gaussian release "
            "charged to each device's ε)"
        ),
    ] = None,
    local_eval_noise: Annotated[
        float | None,
        typer.Option(help="Noise multiplier of a noised evaluation release (default 10)"),
    ] = None,
    local_grad_sample_mode: Annotated[
        str | None, typer.Option(help="hooks, or ghost (mf with --weight-decay 0 only)")
    ] = None,
    user_noise: Annotated[
        float | None, typer.Option(help="Server noise multiplier z (noise std z·S)")
    ] = None,
    user_epsilon: Annotated[
        float | None, typer.Option(help="User-level ε target over the planned rounds")
    ] = None,
    user_clip: Annotated[
        float | None, typer.Option(help="Clip norm S of each device's update")
    ] = None,
    user_epsilon_budget: Annotated[
        float | None, typer.Option(help="The server stops training beyond this ε")
    ] = None,
    user_delta: Annotated[
        float | None, typer.Option(help="User δ (default min(1e-5, 1/(10·N)))")
    ] = None,
    user_accountant: Annotated[str | None, typer.Option(help="pld or rdp (dp-accounting)")] = None,
    noise_seed: Annotated[
        int | None,
        typer.Option(help="Seed the privacy noise (simulations only; default: secure source)"),
    ] = None,
    audit_canaries: Annotated[
        int | None,
        typer.Option(
            help="Canary devices for the empirical audit: each adds a random direction of "
            "norm --user-clip, in the run with probability 1/2 (default 0: none)"
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run directory")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the interrupted run in this directory")
    ] = None,
    cpus_per_device: Annotated[float, typer.Option(help="Ray CPUs per virtual device")] = 1.0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own logs")] = False,
) -> None:
    """Train a model across one simulated device per user with Flower, and write a run dir."""
    options = {
        k: v for k, v in locals().items() if k not in ("resume", "cpus_per_device", "verbose")
    }
    from pollinate.simulations.engine import run_federation

    try:
        cfg = build_config(options, resume)
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    run_federation(cfg, resume=resume is not None, cpus_per_device=cpus_per_device, verbose=verbose)
    summary = json.loads((Path(cfg.out) / "metrics.json").read_text())
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    source = f"  ({summary['final_source']})" if summary.get("final_source") else ""
    console.print(f"[green]done[/green]: {cfg.out}/metrics.json  {final}{source}")
