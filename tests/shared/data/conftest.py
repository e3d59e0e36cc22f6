"""Shared fixtures of the data tests: fixture folders, the real data folder, a clean env."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REAL_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def real_data() -> Path:
    if not (REAL_DATA / "SHA256SUMS").is_file():
        pytest.skip(f"real datasets not found at {REAL_DATA} (CI has them beside the repo)")
    return REAL_DATA


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's data dir or cache; downloads land in tmp_path."""
    monkeypatch.delenv("POLLINATE_DATA_DIR", raising=False)
    monkeypatch.setenv("POLLINATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def copy_fixture(tmp_path: Path):
    """Copy a fixture folder into ``tmp_path/<dest>/<name>`` and return the copy."""

    def copy(name: str, dest: str = "data") -> Path:
        target = tmp_path / dest / name
        shutil.copytree(FIXTURES / name, target)
        return target

    return copy
