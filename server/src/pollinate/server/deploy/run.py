"""``pollinate server run``: submit the ServerApp with a validated run config and report
how it ended.

What ``flwr run`` alone gets wrong for an operator, and what this does instead:

* every key of :class:`~pollinate.shared.config.FederationConfig` is a run-config key:
  the submitted Flower App is a folder whose ``pyproject.toml`` holds the **whole**
  resolved config (Flower refuses an override of a key its app config lacks, and TOML
  cannot write "unset", so a fixed ``[tool.flwr.app.config]`` could not switch on
  ``local-noise``); a bad config is refused here, before anything is submitted;
* ``flwr run`` returns once the run is submitted and exits 0 whatever happens next: we
  stream the run's log until it ends, read its final status, and the command exits
  non-zero unless it is ``finished:completed``;
* rounds in which devices failed, refused or sent malformed replies are listed from the
  run's ``metrics.jsonl`` (a run that "succeeds" with ``failed: 1`` says so).
"""

from __future__ import annotations

import hashlib
import json
import math
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pollinate.server.deploy.superlink import (
    CONNECTION,
    ServerState,
    SuperLinkError,
    _json_out,
    flwr,
)
from pollinate.shared.config import FederationConfig
from pollinate.shared.processes import tool_path

#: The run-config key that tells the ServerApp to resume from the run directory.
RESUME_KEY = "resume"
COMPLETED = "finished:completed"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SuperLinkError(f"{value} cannot go into a run config")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise SuperLinkError(f"a run-config value must be a scalar, got {type(value).__name__}")


def run_config(cfg: FederationConfig, *, resume: bool) -> dict[str, Any]:
    """The run config the ServerApp receives: every set key of ``cfg``, paths made
    absolute (the ServerApp runs in another folder), no progress bar (it goes to a log),
    and ``resume``."""
    values = {k: v for k, v in cfg.to_flat().items() if v is not None}
    values["out"] = str(Path(cfg.out).resolve())
    if cfg.data_dir is not None:
        values["data-dir"] = str(Path(cfg.data_dir).resolve())
    values["progress"] = False
    values[RESUME_KEY] = resume
    return values


def app_folder(state: ServerState, values: dict[str, Any]) -> Path:
    """A Flower App folder whose ``[tool.flwr.app.config]`` is ``values``: the
    components are the installed Pollinate's ServerApp and ClientApp."""
    lines = [
        "[build-system]",
        'requires = ["hatchling"]',
        'build-backend = "hatchling.build"',
        "",
        "[project]",
        'name = "pollinate-run"',
        'version = "1.0.0"',
        "",
        "[tool.flwr.app]",
        'publisher = "pollinate"',
        "",
        "[tool.flwr.app.components]",
        'serverapp = "pollinate.server.app:app"',
        'clientapp = "pollinate.client.app:app"',
        "",
        "[tool.flwr.app.config]",
        *(f"{key} = {_toml_value(value)}" for key, value in sorted(values.items())),
        "",
    ]
    text = "\n".join(lines)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    folder = state.apps / f"run-{digest}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "pyproject.toml").write_text(text)
    return folder


def submit(state_dir: Path, cfg: FederationConfig, *, resume: bool = False) -> int:
    """Submit the ServerApp with ``cfg`` to the running SuperLink; return the run id."""
    state = ServerState(state_dir)
    state.record()
    folder = app_folder(state, run_config(cfg, resume=resume))
    result = flwr(state, "run", str(folder), CONNECTION, "--format", "json")
    data = _json_out(result, "submitting the run")
    return int(str(data["run-id"]))


def stream_log(state_dir: Path, run_id: int, out: IO[str] | None = None) -> Path:
    """Stream the run's log (``flwr log --stream``) to ``out`` and to
    ``STATE/runs/RUN_ID.log`` until the run ends."""
    state = ServerState(state_dir)
    path = state.root / "runs" / f"{run_id}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with (
        path.open("w") as log,
        subprocess.Popen(
            [tool_path("flwr"), "log", str(run_id), CONNECTION, "--stream"],
            env=state.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            log.flush()
            if out is not None:
                out.write(line)
                out.flush()
    return path


def run_status(state_dir: Path, run_id: int) -> tuple[str, str]:
    """The run's status (``finished:completed``, ``running``, ...) and its details."""
    state = ServerState(state_dir)
    data = _json_out(
        flwr(state, "ls", CONNECTION, "--run-id", str(run_id), "--format", "json"),
        f"reading the status of run {run_id}",
    )
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise SuperLinkError(f"the SuperLink knows no run {run_id}")
    row = runs[0]
    return str(row.get("status")), str(row.get("status-details", ""))


@dataclass
class RunReport:
    run_id: int
    status: str
    details: str
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == COMPLETED

    @property
    def troubled_rounds(self) -> list[dict[str, Any]]:
        """Rounds in which some sampled device failed, refused or was rejected."""
        return [r for r in self.rounds if round_trouble(r)]


def round_trouble(entry: dict[str, Any]) -> str | None:
    """What went wrong with devices in one ``metrics.jsonl`` round, or None."""
    parts = []
    if entry.get("failed"):
        parts.append(f"{entry['failed']} failed (no reply: crashed, offline or timed out)")
    if entry.get("refused"):
        parts.append(f"refused {entry['refused']}")
    if entry.get("rejected"):
        parts.append(f"{entry['rejected']} malformed {entry.get('rejected_reasons', {})}")
    if entry.get("eval_refused"):
        parts.append(f"evaluation refused {entry['eval_refused']}")
    if entry.get("eval_rejected"):
        parts.append(f"evaluation malformed {entry['eval_rejected']}")
    return "; ".join(parts) or None


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    rounds = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rounds.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line being written
    return rounds


def describe_round(entry: dict[str, Any]) -> str:
    text = (
        f"round {entry.get('round')}: sampled {entry.get('sampled', 0)}, "
        f"aggregated {entry.get('aggregated', 0)}"
    )
    if entry.get("wall_s") is not None:
        text += f", {float(entry['wall_s']):.1f} s"
    if entry.get("local_epsilon_max") is not None:
        text += f", device ε max {float(entry['local_epsilon_max']):.3g}"
    trouble = round_trouble(entry)
    return text + (f"  -- DEVICES: {trouble}" if trouble else "")


def run_and_wait(
    state_dir: Path,
    cfg: FederationConfig,
    *,
    resume: bool = False,
    out: IO[str] | None = sys.stdout,
    on_submit: Callable[[int], None] | None = None,
) -> RunReport:
    """Submit, stream the log until the run ends, and report its status and rounds."""
    run_id = submit(state_dir, cfg, resume=resume)
    if on_submit is not None:
        on_submit(run_id)
    stream_log(state_dir, run_id, out)
    try:
        status, details = run_status(state_dir, run_id)
    except SuperLinkError as exc:  # the SuperLink went away with the run
        status, details = "unknown", f"the run's status cannot be read: {exc}"
    return RunReport(run_id, status, details, read_rounds(Path(cfg.out)))
