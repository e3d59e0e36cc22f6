"""Typed configuration of a federated run, validated once at the edge.

The same keys serve the ``pollinate simulate`` CLI (``--sample-rate``), Flower's run
config (``sample-rate`` in ``[tool.flwr.app.config]``) and the resolved ``config.json``
of a run directory. Unknown keys are rejected with the list of known ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from pollinate.shared.data.columns import looks_like_path, parse_columns
from pollinate.shared.errors import ConfigError

ServerOpt = Literal["fedavg", "fedadam", "fedadagrad"]
DPMode = Literal["none", "local", "user", "both"]

#: Default server learning rates by (optimizer, model). Measured (RESULTS.md): FedAdagrad
#: 0.3 for ``mf`` on ML-100K; 0.03 for ``interest`` at its default k = 64 (k = 64 had
#: diverged at 0.1 with one device rate, whose first FedAdagrad steps are about ``lr`` on
#: every coordinate whatever the device rates; 0.03 with the encoder at 0.0025 is stable,
#: which of the two it needs was not separated; at k = 16, 0.1 had beaten 0.03).
#: FedAvg and FedAdam defaults are conservative, not tuned: pass ``--server-lr``.
DEFAULT_SERVER_LR: dict[tuple[str, str], float] = {
    ("fedadagrad", "mf"): 0.3,
    ("fedadagrad", "interest"): 0.03,
    ("fedadam", "mf"): 0.03,
    ("fedadam", "interest"): 0.01,
    ("fedavg", "mf"): 1.0,
    ("fedavg", "interest"): 1.0,
}


#: Device learning rates and loss by (task, model), used where the run does not set
#: them. Measured with simulations/benchmarks/tune_inprocess.py (RESULTS.md): for rating,
#: lower private rates and L2 stop the private vectors over-fitting a device's few
#: ratings; for ranking, the full-catalogue softmax on the device is what lifts
#: federated ``mf`` above popularity, at device rate 0.05 (the ``interest`` encoder's
#: shared weights diverge at 0.05: they take batch-size times the per-example step).
#: Under local DP the loss must be one Opacus clips per example: sampled softmax.
#: ``interest`` trains 5 local epochs a round: its encoder otherwise gets about one
#: server step per round (ML-100K test NDCG@10: 0.0671 with 1 epoch, 0.0870 with 3,
#: both in process; 0.0939 with 5 on Flower, all after 30 rounds), and without L2,
#: as the centralized reference (after 10 rounds in process: 0.0828 against 0.0756
#: with L2 0.05; on Flower after 30 rounds: 0.1066 with seed 0, 0.0978 with seed 1).
#: ``interest`` is as wide as the centralized reference, k = 64: at k = 16 the centralized
#: model itself tests 0.109 on ML-100K against 0.137 at k = 64 (history 20, one seed each),
#: which capped federated k = 16 (0.105). Federated k = 64 gains less than that (0.111 over
#: two seeds, 40 rounds on Flower), so width is only part of the gap. k = 64 is stable on
#: the device with the encoder's dense weights at 0.0025 (they take batch-size times the
#: per-example step) and FedAdagrad at 0.03 (``DEFAULT_SERVER_LR``).
TASK_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("rating", "mf"): {
        "lr-local": 0.005,
        "lr-global": 0.01,
        "loss": "mse",
        "local-epochs": 1,
        "weight-decay": 0.05,
        "embedding-dim": 16,
    },
    ("ranking", "mf"): {
        "lr-local": 0.05,
        "lr-global": 0.05,
        "loss": "softmax",
        "local-epochs": 1,
        "weight-decay": 0.05,
        "embedding-dim": 16,
    },
    ("ranking", "interest"): {
        "lr-local": 0.05,
        "lr-global": 0.01,
        "lr-encoder": 0.0025,
        "loss": "softmax",
        "local-epochs": 5,
        "weight-decay": 0.0,
        "embedding-dim": 64,
    },
}
LOCAL_DP_RANKING_LOSS = "sampled_softmax"


def _dash(name: str) -> str:
    return name.replace("_", "-")


class FederationConfig(BaseModel):
    """Everything a federated run needs; ``extra="forbid"`` rejects unknown keys."""

    model_config = ConfigDict(
        extra="forbid", alias_generator=_dash, populate_by_name=True, frozen=True
    )

    # Data
    #: A registry name (``synthetic``, ``ml-100k``, ``ml-latest-small``, ``amazon-beauty``,
    #: ...) or the path of your own CSV, TSV or Parquet file (made absolute, so that every
    #: simulated device finds it).
    dataset: str = "synthetic"
    #: Your own file's column mapping, ``user=COL,item=COL,rating=COL,timestamp=COL``
    #: (in a run file also a table); roles left out are detected from the header by common
    #: names, ``timestamp=`` (empty) says there is none. Only with a file ``dataset``.
    columns: str | None = None
    data_dir: str | None = None
    synthetic_users: int = Field(1000, ge=50, le=1_000_000)
    synthetic_items: int = Field(500, ge=10)
    task: Literal["rating", "ranking"] = "rating"
    fold: int = Field(0, ge=0, le=4)
    # Model
    model: Literal["mf", "interest"] = "mf"
    #: By task and model when unset (``TASK_DEFAULTS``): 16 for ``mf``, 64 for ``interest``.
    embedding_dim: int = Field(ge=1)
    #: ``mf`` only: train the global mean μ (see BiasedMF); turn off under user-level DP.
    learn_global_mean: bool = True
    history_len: int = Field(20, ge=1)
    #: ``interest``: dropout inside the encoder while devices train; ``None``: the model's
    #: default (0.2). The centralized reference trains with 0.3.
    dropout: float | None = Field(None, ge=0, lt=1)
    # Device training
    #: By task and model when unset (``TASK_DEFAULTS``).
    local_epochs: int = Field(ge=1)
    #: Most minibatch steps a device takes in one round (``None``: no limit, every device
    #: runs ``local_epochs`` full epochs). It bounds how far a heavy user's local model
    #: drifts: with 5 epochs of batch 32, a device with 735 training rows takes 115 steps
    #: a round and the median ML-100K device 10. Under ``--dp local`` the device's
    #: accountant composes the steps actually taken.
    max_local_steps: int | None = Field(None, ge=1)
    #: Devices train on their validation rows too (every row but the test rows): the
    #: federated analog of the centralized reference's refit on training + validation
    #: rows, for a final model whose round count was chosen beforehand. Validation
    #: metrics would then be measured on training rows, so it needs ``eval_every`` 0;
    #: the final evaluation on test rows runs as always.
    train_on_validation: bool = False
    batch_size: int = Field(32, ge=1)
    #: Device learning rates: by task and model when unset (``TASK_DEFAULTS``).
    lr_global: float = Field(gt=0)
    lr_local: float = Field(gt=0)
    #: ``interest``: device rate of the encoder's dense weights, which every example
    #: touches (the loss is summed, so they take batch-size times the per-example step);
    #: ``None``: ``lr_global``.
    lr_encoder: float | None = Field(None, gt=0)
    #: ``interest``: largest L2 norm of the encoder's gradient in one device step, a
    #: stabiliser of plain training (not a privacy clip; refused under local DP, whose
    #: DP-SGD clips every example). ``None``: no limit.
    encoder_max_grad_norm: float | None = Field(None, gt=0)
    #: Device optimizer: ``sgd`` on the summed loss, or ``adam`` (fresh moments each
    #: round), whose steps do not grow with the batch; the lr-* keys are its step sizes.
    #: ``adam-encoder``: Adam for the interest encoder's dense weights (step ``lr-encoder``),
    #: SGD for the item rows and the private parameters.
    device_optimizer: Literal["sgd", "adam", "adam-encoder"] = "sgd"
    #: L2 on the rows an example touches: by task and model when unset (``TASK_DEFAULTS``).
    weight_decay: float = Field(ge=0)
    #: Decay of the private parameters alone at every device step (the optimizer's
    #: ``weight_decay`` on their group); bounds them where ``weight-decay`` is 0.
    private_weight_decay: float = Field(0.0, ge=0)
    #: ``softmax`` (the whole catalogue) and ``shared_softmax`` read the item table
    #: directly, so Opacus cannot clip them per example: not with ``--dp local``.
    #: By task and model when unset (``TASK_DEFAULTS``).
    loss: Literal["mse", "bpr", "sampled_softmax", "shared_softmax", "softmax"]
    negatives: int = Field(64, ge=1)
    #: ``mf``: refit the private parameters to the global tables (ridge on ratings,
    #: Newton on the full softmax for rankings; L2 ``refit_reg`` per row) before each
    #: local round and before evaluating (pollinate.client.personalize). On by default
    #: for ratings, except under local DP, which it would bypass.
    private_refit: bool
    refit_reg: float = Field(0.1, gt=0)
    #: Local adaptation before every evaluation (pollinate.client.adaptation): each
    #: device trains a copy of its whole local model for ``adapt_epochs`` epochs on its
    #: training rows at ``adapt_lr_scale`` times its rates and scores with the copy,
    #: which it neither saves nor sends. 0: score the received global model as is. On
    #: ML-100K ``interest`` 1 epoch at 0.5 was chosen on validation (RESULTS.md, twentieth
    #: session). Not under local DP.
    adapt_epochs: int = Field(0, ge=0)
    adapt_lr_scale: float = Field(0.5, gt=0)
    # Server
    rounds: int = Field(20, ge=1)
    sample_rate: float = Field(0.2, gt=0, le=1)
    server_opt: ServerOpt = "fedadagrad"
    server_lr: float | None = Field(None, gt=0)
    #: FedAdam/FedAdagrad's τ (Reddi et al.): the step is ``lr·m / (√v + τ)``, so a
    #: coordinate whose mean update is small against τ moves slower than ``lr``. Item rows
    #: that few devices touch have small mean updates (ML-100K ``interest``: 2.7·10⁻⁴ a
    #: round for the rarest items, 1.3·10⁻³ for the most popular). FedAvg ignores it.
    server_tau: float = Field(1e-3, gt=0)
    #: Server rate of an encoder's dense weights (``interest``: the arrays every example
    #: uses, ``RecModel.encoder_parameter_names``); the item rows keep ``server_lr``.
    #: ``None``: one rate for all arrays.
    server_lr_encoder: float | None = Field(None, gt=0)
    #: Release an exponential moving average of the server's iterates (β; ``None``: the
    #: last iterate). Devices train from the live iterate; evaluations and the final model
    #: use the debiased average (pollinate.server.averaging). Post-processing: no ε.
    server_ema: float | None = Field(None, ge=0, lt=1)
    #: How device updates are averaged: ``equal`` (each device once) or ``examples``
    #: (weighted by the device's training examples, FedAvg's original weighting; refused
    #: under user-level DP, whose sensitivity bound needs equal weights).
    aggregation: Literal["equal", "examples"] = "equal"
    eval_every: int = Field(5, ge=0)
    eval_sample_rate: float = Field(0.2, gt=0, le=1)
    num_devices: int | None = Field(None, ge=1)
    #: Seconds the server waits for all devices to connect before round 1 (sampling
    #: from a partial population would break the sampling rate the accountant assumes).
    wait_timeout: float = Field(120.0, gt=0)
    # Differential privacy (see ARCHITECTURE.md §3 and docs in pollinate.shared.privacy)
    dp: DPMode = "none"
    local_noise: float | None = Field(None, gt=0)
    local_epsilon: float | None = Field(None, gt=0)
    local_clip: float = Field(0.5, gt=0)
    local_epsilon_budget: float | None = Field(None, gt=0)
    local_delta: float | None = Field(None, gt=0, lt=1)
    #: The interaction-level accountant: dp-accounting's PLD under replace-one neighbours,
    #: the only one that accounts a Poisson-sampled Gaussian with a public example count
    #: (``rdp``/``prv``, Opacus's add/remove accountants, are refused with the reason).
    local_accountant: Literal["pld"] = "pld"
    #: Opacus per-example clipping: "hooks" materialises per-example gradients (any
    #: model); "ghost" computes only their norms (far less memory; ``mf`` only, see
    #: pollinate.client.dp_training).
    local_grad_sample_mode: Literal["hooks", "ghost"] = "hooks"
    #: How a simulated device under local DP answers an evaluation request: ``refuse``
    #: (it sends nothing) or ``noised`` (its clipped evaluation sums with Gaussian noise,
    #: composed into its accountant and ledger as a ``kind="evaluate"`` release).
    local_evaluation: Literal["refuse", "noised"] = "refuse"
    #: Noise multiplier z_e of a noised evaluation release (a plain Gaussian, std z_e·C).
    local_eval_noise: float = Field(10.0, gt=0)
    user_noise: float | None = Field(None, gt=0)
    user_epsilon: float | None = Field(None, gt=0)
    user_clip: float = Field(0.1, gt=0)
    user_epsilon_budget: float | None = Field(None, gt=0)
    user_delta: float | None = Field(None, gt=0, lt=1)
    user_accountant: Literal["rdp", "pld"] = "pld"
    #: Seed of the privacy noise, for reproducible simulations only. ``None`` (the
    #: default) draws noise from a secure source; the run report says which was used.
    noise_seed: int | None = None
    #: Canaries for the empirical audit, M of each kind the run's layers need, each in the
    #: run by a secret coin: canary devices whose update is a random direction of norm
    #: ``user_clip`` (user level, ``pollinate.server.canaries``) and canary interactions on
    #: devices (interaction level, ``pollinate.shared.privacy.interaction_canaries``). They
    #: also make the run keep what the membership attacks need. 0: none. They cost a little
    #: utility.
    audit_canaries: int = Field(0, ge=0)
    #: Share of the simulated users kept out of the run by a secret coin each, as the
    #: non-members of the release-side membership attack (``pollinate audit``). 0: none.
    audit_holdout: float = Field(0.0, ge=0, lt=1)
    #: Send the item catalogue (ids, genres, popularity) with every train and evaluate
    #: message (``pollinate.shared.wire.CATALOGUE_RECORD``), for real devices that train on
    #: their own store and know items by the app's ids; ``pollinate server run`` turns it
    #: on. Simulated devices read the dataset and need none.
    send_catalogue: bool = False
    # Run
    #: Seed of the splits, the initialisation and the device generators (public: it is in
    #: ``config.json``, so it never drives privacy noise or sampling).
    seed: int = 0
    #: The run directory (config.json, metrics, plots, ledger, checkpoints, release/).
    out: str = "runs/latest"
    #: Where simulated devices keep their private state (default ``OUT/devices``), so that
    #: an interrupted run resumes exactly.
    device_state_dir: str | None = None
    #: Progress bars and set-up steps on stderr (``--no-progress`` for logs and CI).
    progress: bool = True

    @model_validator(mode="before")
    @classmethod
    def _task_defaults(cls, data: Any) -> Any:
        """Fill the device learning rates and the loss that the run leaves unset."""
        if not isinstance(data, Mapping):
            return data
        values = {_dash(k): v for k, v in data.items()}
        task, model = values.get("task", "rating"), values.get("model", "mf")
        defaults = dict(TASK_DEFAULTS.get((task, model), TASK_DEFAULTS[("rating", "mf")]))
        if task == "ranking" and values.get("dp") in ("local", "both"):
            defaults["loss"] = LOCAL_DP_RANKING_LOSS
        defaults["private-refit"] = (
            task == "rating" and model == "mf" and values.get("dp") not in ("local", "both")
        )
        for key, value in defaults.items():
            if values.get(key) is None:
                values[key] = value
        return values

    @field_validator("dataset", mode="after")
    @classmethod
    def _absolute_file(cls, value: str) -> str:
        """Your own file's path, made absolute: simulated devices may run elsewhere."""
        if looks_like_path(value):
            return str(Path(value).expanduser().resolve())
        return value

    @field_validator("columns", mode="before")
    @classmethod
    def _columns_text(cls, value: Any) -> Any:
        """A run file's ``[columns]`` table becomes the ``--columns`` text; checked here."""
        if value is None:
            return None
        if isinstance(value, Mapping):
            value = ",".join(f"{k}={'' if v is None else v}" for k, v in value.items())
        if not isinstance(value, str):
            raise ValueError("columns is text like 'user=uid,item=sku' or a table of roles")
        try:
            parse_columns(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("local_accountant", mode="before")
    @classmethod
    def _pld_only(cls, value: Any) -> Any:
        if value != "pld":
            # Imported here: dp-accounting takes a second to import.
            from pollinate.shared.privacy.accounting import LOCAL_ACCOUNTANT_REASON

            raise ValueError(f"local accountant {value!r} refused: {LOCAL_ACCOUNTANT_REASON}")
        return value

    @model_validator(mode="after")
    def _check(self) -> FederationConfig:
        if self.columns is not None and not looks_like_path(self.dataset):
            raise ValueError(
                f"--columns maps the columns of your own file, but --dataset {self.dataset!r} "
                "is a registry dataset whose columns are known; leave --columns out"
            )
        if self.model == "interest" and self.task == "rating":
            raise ValueError("the interest model ranks items; use --task ranking with it")
        if self.model == "interest" and self.local_dp:
            raise ValueError(
                f"--dp {self.dp} protects one training example, but an interest example "
                f"carries the previous --history-len interactions, so one interaction appears "
                f"in up to history_len + 1 = {self.history_len + 1} examples and DP-SGD's "
                "per-example bound does not cover it; use --dp user with --model interest"
            )
        if (self.task == "rating") != (self.loss == "mse"):
            raise ValueError(f"loss {self.loss!r} does not fit the {self.task} task")
        if self.local_dp and self.loss in ("softmax", "shared_softmax"):
            raise ValueError(
                f"loss {self.loss!r} reads the item table directly and cannot be "
                "clipped per example by Opacus; use --loss sampled_softmax or bpr with --dp local"
            )
        if self.lr_encoder is not None and self.model != "interest":
            raise ValueError(
                f"--lr-encoder sets the rate of the interest model's encoder; {self.model!r} "
                "has none: leave it unset"
            )
        if self.server_lr_encoder is not None and self.model != "interest":
            raise ValueError(
                f"--server-lr-encoder sets the server rate of the interest model's encoder; "
                f"{self.model!r} has none: leave it unset"
            )
        if self.aggregation == "examples" and self.user_dp:
            raise ValueError(
                "--aggregation examples weights heavy users more, which breaks the user-level "
                "sensitivity bound; use --aggregation equal with --dp user or both"
            )
        if self.dropout is not None and self.model != "interest":
            raise ValueError(
                f"--dropout is the interest encoder's dropout; {self.model!r} has no encoder: "
                "leave it unset"
            )
        if self.device_optimizer == "adam-encoder" and (
            self.model != "interest" or self.lr_encoder is None
        ):
            raise ValueError(
                "--device-optimizer adam-encoder steps the interest encoder with Adam at "
                "--lr-encoder; use it with --model interest and an --lr-encoder"
            )
        if self.encoder_max_grad_norm is not None and (self.model != "interest" or self.local_dp):
            raise ValueError(
                "--encoder-max-grad-norm limits the interest encoder's step in plain device "
                "training; leave it unset for mf and under --dp local/both (DP-SGD clips "
                "every example with --local-clip)"
            )
        if self.private_refit and self.model != "mf":
            raise ValueError("--private-refit is defined for --model mf; use --no-private-refit")
        if self.private_refit and self.task == "ranking" and self.loss != "softmax":
            raise ValueError(
                f"--private-refit on rankings fits the full-softmax objective, not {self.loss!r}; "
                "use --loss softmax or --no-private-refit"
            )
        if self.private_refit and self.local_dp:
            raise ValueError(
                "--private-refit fits the private parameters to raw ratings without noise, "
                "and the device's later DP-SGD updates would depend on it outside the local "
                "accountant; use --no-private-refit with --dp local or both"
            )
        if self.adapt_epochs and self.local_dp:
            raise ValueError(
                "--adapt-epochs fine-tunes the model on raw rows without DP-SGD before "
                "evaluating, and the evaluation sums leave the device; set --adapt-epochs 0 "
                "with --dp local or both"
            )
        if self.train_on_validation and self.eval_every:
            raise ValueError(
                "--train-on-validation trains on the validation rows, so evaluating on them "
                "every few rounds would measure training rows; set --eval-every 0 (the final "
                "evaluation on the test rows still runs)"
            )
        for layer, on in (("local", self.local_dp), ("user", self.user_dp)):
            noise, target = getattr(self, f"{layer}_noise"), getattr(self, f"{layer}_epsilon")
            if on and (noise is None) == (target is None):
                raise ValueError(
                    f"--dp {self.dp} needs exactly one of --{layer}-noise (a noise multiplier) "
                    f"or --{layer}-epsilon (a target ε for the planned rounds)"
                )
            if not on and (noise is not None or target is not None):
                raise ValueError(
                    f"--{layer}-noise/--{layer}-epsilon are set but --dp is {self.dp!r}; "
                    f"use --dp {layer} or --dp both"
                )
        if self.local_noise is not None and self.local_noise < 0.3:
            raise ValueError(
                f"--local-noise {self.local_noise} is below 0.3, where the replace-one PLD "
                "accountant needs gigabytes and ε exceeds 100 within 20 steps (a device "
                "would report ε = inf); use --local-noise 0.3 or more"
            )
        if self.audit_holdout and self.num_devices:
            raise ValueError(
                "--audit-holdout holds out simulated users, one device each; it cannot be "
                "combined with --num-devices"
            )
        if self.user_accountant == "pld" and self.user_noise is not None and self.user_noise < 0.3:
            raise ValueError(
                f"--user-noise {self.user_noise} is below 0.3, where the PLD accountant needs "
                "gigabytes; use --user-accountant rdp for such weak noise"
            )
        return self

    @property
    def local_dp(self) -> bool:
        return self.dp in ("local", "both")

    @property
    def user_dp(self) -> bool:
        return self.dp in ("user", "both")

    @property
    def effective_server_lr(self) -> float:
        if self.server_lr is not None:
            return self.server_lr
        return DEFAULT_SERVER_LR[(self.server_opt, self.model)]

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> FederationConfig:
        """Validate a flat mapping (dashes or underscores); raise ConfigError on any problem."""
        known = {_dash(n) for n in cls.model_fields}
        unknown = sorted(k for k in values if _dash(k) not in known)
        if unknown:
            raise ConfigError(
                f"unknown configuration keys {unknown}; known keys are {sorted(known)}"
            )
        try:
            return cls.model_validate({_dash(k): v for k, v in values.items()})
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}"
                for e in exc.errors()
            )
            raise ConfigError(f"invalid configuration: {problems}") from None

    def to_flat(self) -> dict[str, Any]:
        """The resolved config with dashed keys, as written to config.json."""
        return self.model_dump(by_alias=True)


#: Tables a run file may hold besides its keys: ``[about]`` (free text: what the run is,
#: what it measured; shown by ``pollinate recipes``, never validated) and ``[columns]``
#: (your file's column mapping, the ``columns`` key as a table).
RUN_FILE_TABLES = ("about", "columns")


def read_run_file(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The keys and the ``[about]`` table of a TOML run file, keys checked by name.

    A run file holds the keys of :class:`FederationConfig`, dashed as on the command line
    (``sample-rate = 0.2``) or underscored; a ``pyproject.toml`` is read from its
    ``[tool.flwr.app.config]``. Unknown keys are refused naming the file. The values are
    validated when the run's config is built (:meth:`FederationConfig.from_mapping`).
    """
    import tomllib

    path = Path(path).expanduser()
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: run file not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid TOML run file: {exc}") from None
    if "tool" in raw:
        try:
            raw = dict(raw["tool"]["flwr"]["app"]["config"])
        except (KeyError, TypeError):
            raise ConfigError(
                f"{path}: a pyproject.toml run file needs a [tool.flwr.app.config] table"
            ) from None
    about = raw.pop("about", {})
    if not isinstance(about, Mapping):
        raise ConfigError(f"{path}: [about] must be a table of text")
    known = {_dash(n) for n in FederationConfig.model_fields}
    inside = sorted(k for k in about if _dash(k) in known)
    if inside:
        raise ConfigError(
            f"{path}: the keys {inside} are inside the [about] table, so they would be "
            "ignored; in TOML every key after a [table] line belongs to it: put [about] last"
        )
    unknown = sorted(k for k in raw if _dash(k) not in known)
    if unknown:
        raise ConfigError(
            f"{path}: unknown keys {unknown}; a run file takes the keys of pollinate simulate "
            "(listed in docs/configuration.md) and the tables [about] and [columns]"
        )
    tables = sorted(k for k, v in raw.items() if isinstance(v, Mapping) and _dash(k) != "columns")
    if tables:
        raise ConfigError(f"{path}: {tables} must be single values, not tables")
    return {_dash(k): v for k, v in raw.items()}, dict(about)
