"""What a figure was computed with: software versions, CPU and the settings that change numerics.

A seeded centralized run gives the same figures every time on one machine, but not
across machines: torch, MKL and oneDNN pick their kernels by the CPU's instruction set,
the kernels round differently, and training amplifies the difference. The ML-100K
``interest`` reference tests NDCG@10 0.1331 (best epoch 23) with AVX-512 kernels and
0.1284 (best epoch 12: the recorded figure, every metric to the recorded digit) with
the same code held to AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``, MKL and oneDNN too;
simulations/benchmarks/RESULTS.md, sixteenth session). A run directory therefore records
the environment beside its figures (``environment.json``), so that a figure can be
reproduced on a like machine and a difference traced to the machine, not the code.

The record describes the process that writes it: in a Flower simulation the devices run
on the same machine; in a real deployment they do not, and their environments are not
recorded.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from pollinate.shared.fileio import atomic_write_bytes
from pollinate.shared.versions import package_version

#: The file a run directory keeps its environment records in.
ENVIRONMENT_FILE = "environment.json"

#: Distributions whose versions can change a figure.
PACKAGES = (
    "pollinate",
    "torch",
    "flwr",
    "opacus",
    "numpy",
    "dp-accounting",
    "scipy",
    "ray",
    "pydantic",
)

#: Environment variables that select kernels or thread pools, hence rounding.
NUMERIC_ENV_VARS = (
    "ATEN_CPU_CAPABILITY",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "ONEDNN_MAX_CPU_ISA",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "PYTHONHASHSEED",
)


def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    return platform.processor() or platform.machine()


def _git_revision(module: Path) -> dict[str, Any] | None:
    """The commit of the checkout that tracks ``module`` and whether its tracked files
    have changes, or ``None`` where no checkout tracks it (an installed wheel, even one in
    a virtual environment inside some checkout) or git is missing."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(module.parent), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout

    try:
        git("ls-files", "--error-unmatch", module.name)
        head = git("rev-parse", "HEAD").strip()
        status = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": head, "modified": bool(status.strip())}


def describe_environment() -> dict[str, Any]:
    """A JSON-ready description of this process's software, CPU and numeric settings."""
    return {
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "packages": {name: package_version(name) for name in PACKAGES},
        "env": {name: os.environ[name] for name in NUMERIC_ENV_VARS if name in os.environ},
        "code": _git_revision(Path(__file__).resolve().with_name("__init__.py")),
    }


def record_environment(run_dir: Path, *, resumed: bool = False) -> dict[str, Any]:
    """Write this process's environment to ``run_dir/environment.json``.

    A fresh run starts the file; a resumed run appends to it, so a run continued on
    another machine shows both. Returns the entry written.
    """
    entry = describe_environment() | {"resumed": resumed}
    path = run_dir / ENVIRONMENT_FILE
    entries: list[dict[str, Any]] = []
    if resumed and path.is_file():
        try:
            entries = list(json.loads(path.read_text())["runs"])
        except (ValueError, KeyError, TypeError):
            # A damaged record must not stop the run; keep the damaged file beside it.
            path.replace(path.with_suffix(".json.damaged"))
            entries = []
    entries.append(entry)
    text = json.dumps({"runs": entries}, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, text.encode())
    return entry
