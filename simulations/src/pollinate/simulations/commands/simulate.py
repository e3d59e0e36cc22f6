"""``pollinate simulate``: a federated run on Flower's simulation runtime."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.simulations.cli import app

console = Console(stderr=True)


def file_options(config: Path | None, recipe: str | None) -> dict[str, Any]:
    """The keys of ``--recipe`` and then ``--config`` (the run file's win): the base that
    the command line's flags override."""
    from pollinate.shared.config import read_run_file

    values: dict[str, Any] = {}
    if recipe is not None:
        from pollinate.simulations.recipes import load_recipe

        values.update(load_recipe(recipe).values)
    if config is not None:
        values.update(read_run_file(config)[0])
    return values


def build_config(
    options: dict[str, Any], resume: Path | None, base: dict[str, Any] | None = None
) -> FederationConfig:
    """The run's config: ``base`` (a recipe, a run file) overridden by the CLI options, or
    the saved config of the run being resumed.

    A resumed run keeps its saved config; it may be extended to more rounds and given
    ε budgets. A run whose noise was calibrated to an ε target (``--user-epsilon``,
    ``--local-epsilon``) for R rounds spends that target in R rounds, so extending it
    would spend more: that is refused unless the layer's ε budget is set, which then
    stops the run (or the device) before the budget is exceeded.
    """
    given = {k.replace("_", "-"): v for k, v in options.items() if v is not None}
    if base and resume is not None:
        raise PollinateError(
            "--resume continues a run with its saved config; drop --config/--recipe"
        )
    given = {**(base or {}), **given}
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
        _refuse_training_after_released_evaluations(resume, cfg.rounds)
        return cfg
    cfg = FederationConfig.from_mapping(given)
    if cfg.device_state_dir is None:
        # Simulated devices keep their private state on "disk", as a phone would, so
        # that an interrupted run can resume exactly.
        cfg = cfg.model_copy(update={"device_state_dir": str(Path(cfg.out) / "devices")})
    return cfg


def _refuse_training_after_released_evaluations(run: Path, rounds: int) -> None:
    """Refuse a resume that would train after noised evaluations the devices released
    past the checkpoint's round C: the run's final evaluation (numbered C + 1 when the
    run finished), or the evaluation of a round the run died in.

    A ledger composes each device's releases in (round, training before evaluation)
    order; training round C + 1 again would come after such an evaluation in time but
    before it in that order, so every ε recorded after it would be recomputed wrong.
    A resume that trains no further round (``rounds`` = C) only evaluates again: allowed.
    """
    from pollinate.server.checkpoint import CheckpointError, load_checkpoint
    from pollinate.shared.privacy.ledger import LedgerError, read_ledger

    path = run / "ledger.jsonl"
    try:
        done = load_checkpoint(run).round
    except CheckpointError:
        return  # the resume itself says what is missing
    if rounds <= done or not path.is_file():
        return
    try:
        events = read_ledger(path)
    except LedgerError as exc:
        raise PollinateError(f"cannot resume: {exc}") from exc
    late = [e for e in events if e.layer == "local" and e.kind == "evaluate" and e.round > done]
    if late:
        raise PollinateError(
            f"--resume to {rounds} rounds: {len({e.device for e in late})} devices already "
            f"released noised evaluations after round {done} (the last checkpoint), and "
            "training after them cannot be ordered in their privacy ledgers; start a new "
            f"run with --rounds {rounds} (resuming to {done} rounds is fine)"
        )


SIMULATE_HELP = (
    "Train a model across one simulated device per user with Flower, and write a run dir.\n\n"
    "Start from a recipe (pollinate recipes) or your own run file (--config run.toml); "
    "flags override both. The common options are listed below; every other key of "
    "docs/configuration.md (the research options: learning rates, losses, server "
    "optimizer, accountants, ...) works in a run file or as a flag of the same name."
)


@app.command("simulate", help=SIMULATE_HELP)
def simulate(
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A TOML run file with any keys of docs/configuration.md (flags override it)",
        ),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            help="A shipped run file of a measured setting, e.g. ml-100k/rating/user-dp "
            "(pollinate recipes lists them; --config and flags override it)"
        ),
    ] = None,
    dataset: Annotated[
        str | None,
        typer.Option(
            help="synthetic, ml-100k, ml-latest-small, amazon-beauty, ..., or the path of "
            "your own .csv/.tsv/.parquet file"
        ),
    ] = None,
    columns: Annotated[
        str | None,
        typer.Option(
            help="Your file's columns: user=COL,item=COL,rating=COL,timestamp=COL "
            "(left out: detected from the header)"
        ),
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
        typer.Option(
            help="Most device steps per round (caps heavy users; default: no cap)", hidden=True
        ),
    ] = None,
    train_on_validation: Annotated[
        bool | None,
        typer.Option(
            "--train-on-validation/--no-train-on-validation",
            help="Devices train on their validation rows too (the analog of the centralized "
            "refit on train + validation; needs --eval-every 0)",
            hidden=True,
        ),
    ] = None,
    server_opt: Annotated[str | None, typer.Option(help="fedavg, fedadam or fedadagrad")] = None,
    server_lr: Annotated[
        float | None, typer.Option(help="Server learning rate (default per optimizer)", hidden=True)
    ] = None,
    server_lr_encoder: Annotated[
        float | None,
        typer.Option(
            help="interest: server rate of the encoder (default: --server-lr)", hidden=True
        ),
    ] = None,
    server_tau: Annotated[
        float | None, typer.Option(help="FedAdam/FedAdagrad's tau (default 1e-3)", hidden=True)
    ] = None,
    server_ema: Annotated[
        float | None,
        typer.Option(
            help="Evaluate and release an exponential moving average of the server's "
            "iterates with this beta (default: the last iterate)",
            hidden=True,
        ),
    ] = None,
    aggregation: Annotated[
        str | None,
        typer.Option(
            help="equal (default: each device once) or examples (weighted by training "
            "examples; not with user-level DP)",
            hidden=True,
        ),
    ] = None,
    embedding_dim: Annotated[int | None, typer.Option(help="Latent dimension", hidden=True)] = None,
    learn_global_mean: Annotated[
        bool | None,
        typer.Option(
            "--learn-global-mean/--no-learn-global-mean",
            help="mf: train the global mean (turn off under user-level DP with FedAvg)",
            hidden=True,
        ),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Local batch size", hidden=True)] = None,
    lr_global: Annotated[
        float | None, typer.Option(help="Device learning rate of global parameters", hidden=True)
    ] = None,
    lr_local: Annotated[
        float | None, typer.Option(help="Device learning rate of private parameters", hidden=True)
    ] = None,
    lr_encoder: Annotated[
        float | None,
        typer.Option(
            help="interest: device learning rate of the encoder (default: lr-global)", hidden=True
        ),
    ] = None,
    encoder_max_grad_norm: Annotated[
        float | None,
        typer.Option(
            help="interest: largest norm of the encoder's gradient in a device step", hidden=True
        ),
    ] = None,
    device_optimizer: Annotated[
        str | None,
        typer.Option(
            help="sgd (default), adam, or adam-encoder (Adam for the interest encoder at "
            "--lr-encoder, SGD for the rest); the lr-* options are its step sizes",
            hidden=True,
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="L2 on the rows an example touches", hidden=True)
    ] = None,
    private_weight_decay: Annotated[
        float | None,
        typer.Option(
            help="Decay of the private parameters alone at every device step", hidden=True
        ),
    ] = None,
    loss: Annotated[
        str | None,
        typer.Option(help="mse, bpr, sampled_softmax, softmax (not with --dp local)", hidden=True),
    ] = None,
    negatives: Annotated[
        int | None, typer.Option(help="Negatives per example (ranking losses)", hidden=True)
    ] = None,
    private_refit: Annotated[
        bool | None,
        typer.Option(
            "--private-refit/--no-private-refit",
            help="mf: refit the private vector to the global tables each round (ratings: ridge; "
            "rankings: Newton on the full softmax) "
            "(default on for ratings, off under --dp local)",
            hidden=True,
        ),
    ] = None,
    refit_reg: Annotated[
        float | None, typer.Option(help="L2 weight of the private refit (per row)", hidden=True)
    ] = None,
    adapt_epochs: Annotated[
        int | None,
        typer.Option(
            help="Before every evaluation each device fine-tunes a copy of its model for this "
            "many epochs on its training rows, and scores with it (default 0: off; not with "
            "--dp local)",
            hidden=True,
        ),
    ] = None,
    adapt_lr_scale: Annotated[
        float | None,
        typer.Option(
            help="The adaptation's rates, times the device's rates (default 0.5)", hidden=True
        ),
    ] = None,
    history_len: Annotated[
        int | None, typer.Option(help="Behaviour history length (interest)", hidden=True)
    ] = None,
    dropout: Annotated[
        float | None,
        typer.Option(help="interest: encoder dropout on devices (default 0.2)", hidden=True),
    ] = None,
    eval_every: Annotated[
        int | None, typer.Option(help="Evaluate every N rounds (0: never)")
    ] = None,
    eval_sample_rate: Annotated[
        float | None, typer.Option(help="Share of devices evaluated every N rounds", hidden=True)
    ] = None,
    synthetic_users: Annotated[
        int | None, typer.Option(help="Users of the synthetic dataset")
    ] = None,
    synthetic_items: Annotated[
        int | None, typer.Option(help="Items of the synthetic dataset", hidden=True)
    ] = None,
    num_devices: Annotated[
        int | None, typer.Option(help="Devices to wait for (default: one per user)", hidden=True)
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed of sampling, initialisation and splits")
    ] = None,
    dp: Annotated[
        str | None, typer.Option(help="Differential privacy: none, local, user or both")
    ] = None,
    local_noise: Annotated[
        float | None, typer.Option(help="Device DP-SGD noise multiplier z", hidden=True)
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
        float | None, typer.Option(help="Device δ (default min(1e-5, 1/(10·n)))", hidden=True)
    ] = None,
    local_accountant: Annotated[
        str | None, typer.Option(help="pld (dp-accounting, replace-one): the only one", hidden=True)
    ] = None,
    local_evaluation: Annotated[
        str | None,
        typer.Option(
            help="Local-DP devices' answer to evaluation requests: refuse (default; the "
            "simulation scores the released model itself) or noised (a Gaussian release "
            "charged to each device's ε)",
            hidden=True,
        ),
    ] = None,
    local_eval_noise: Annotated[
        float | None,
        typer.Option(
            help="Noise multiplier of a noised evaluation release (default 10)", hidden=True
        ),
    ] = None,
    local_grad_sample_mode: Annotated[
        str | None,
        typer.Option(help="hooks, or ghost (mf only)", hidden=True),
    ] = None,
    user_noise: Annotated[
        float | None, typer.Option(help="Server noise multiplier z (noise std z·S)", hidden=True)
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
        float | None, typer.Option(help="User δ (default min(1e-5, 1/(10·N)))", hidden=True)
    ] = None,
    user_accountant: Annotated[
        str | None, typer.Option(help="pld or rdp (dp-accounting)", hidden=True)
    ] = None,
    noise_seed: Annotated[
        int | None,
        typer.Option(
            help="Seed the privacy noise (simulations only; default: secure source)", hidden=True
        ),
    ] = None,
    audit_canaries: Annotated[
        int | None,
        typer.Option(
            help="Canaries for pollinate audit, M of each kind the run's layers need (canary "
            "devices for user-level DP, canary interactions for local DP), each in the run by "
            "a secret coin; also keeps what the membership attacks need (default 0: none)"
        ),
    ] = None,
    audit_holdout: Annotated[
        float | None,
        typer.Option(
            help="Share of users kept out of the run by a secret coin, as the non-members of "
            "the audit's release-side membership attack (default 0)"
        ),
    ] = None,
    out: Annotated[str | None, typer.Option(help="Run directory")] = None,
    resume: Annotated[
        Path | None, typer.Option(help="Continue the interrupted run in this directory")
    ] = None,
    cpus_per_device: Annotated[
        float, typer.Option(help="Ray CPUs per virtual device", hidden=True)
    ] = 1.0,
    progress: Annotated[bool | None, typer.Option("--progress/--no-progress")] = None,
    verbose: Annotated[bool, typer.Option(help="Show Flower's own logs")] = False,
    engine: Annotated[
        str,
        typer.Option(
            help="flower (default: one message per device, what a deployment runs) or fast "
            "(the same device and server code, shards of devices in Ray workers that return "
            "one sum a round; no audit canaries)"
        ),
    ] = "flower",
    ray_address: Annotated[
        str | None,
        typer.Option(help="--engine fast: join this Ray cluster (default: start one here)"),
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(help="--engine fast: shards (default: one per CPU of the Ray cluster)"),
    ] = None,
) -> None:
    """Train a model across one simulated device per user with Flower, and write a run dir."""
    options = {
        k: v
        for k, v in locals().items()
        if k
        not in ("resume", "cpus_per_device", "verbose", "config", "recipe", "engine",
                "ray_address", "workers")
    }  # fmt: skip
    if engine not in ("flower", "fast"):
        console.print(f"[red]error:[/red] --engine must be 'flower' or 'fast', got {engine!r}")
        raise typer.Exit(2)
    if engine == "flower" and (ray_address is not None or workers is not None):
        console.print("[red]error:[/red] --ray-address and --workers need --engine fast")
        raise typer.Exit(2)
    from pollinate.simulations.engine import run_federation

    try:
        cfg = build_config(options, resume, file_options(config, recipe))
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    # dp-accounting's RDP search logs a warning for every order it cannot use at a huge
    # trial noise while calibrating (harmless, and hundreds of lines).
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        if engine == "fast":
            from pollinate.simulations.fast import run_fast

            run_fast(cfg, ray_address=ray_address, workers=workers, resume=resume is not None)
        else:
            run_federation(
                cfg, resume=resume is not None, cpus_per_device=cpus_per_device, verbose=verbose
            )
    except PollinateError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    summary = json.loads((Path(cfg.out) / "metrics.json").read_text())
    final = ", ".join(f"{k}={v:.4f}" for k, v in summary["final"].items())
    source = f"  ({summary['final_source']})" if summary.get("final_source") else ""
    console.print(f"[green]done[/green]: {cfg.out}/metrics.json  {final}{source}")
