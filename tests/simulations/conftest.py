"""Shared by the tests of simulations/: importing a benchmark script (not a package)."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = REPO_ROOT / "simulations/benchmarks"
#: One-off analysis scripts of past measurements (moved out of the benchmarks).
EXPERIMENT_SCRIPTS = REPO_ROOT / "docs/experiments/scripts"


def _load(name: str) -> ModuleType:
    path = BENCHMARKS / f"{name}.py"
    if not path.exists():
        path = EXPERIMENT_SCRIPTS / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def load_benchmark() -> Callable[[str], ModuleType]:
    """``load_benchmark("NAME")``: the module of ``simulations/benchmarks/NAME.py`` (or of
    ``docs/experiments/scripts/NAME.py``)."""
    return _load
