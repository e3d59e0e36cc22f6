"""Shared fixtures of the data tests: fixture folders, the real data folder, a clean env."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
#: Hand-written miniature files in each format. They are stored as ``NAME.fixture`` so
#: that no file in the repository carries a licensed dataset's file name (the project's
#: rule), and are copied under their real names into a temporary folder for the tests.
FIXTURE_SOURCES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fixtures")
    for src in FIXTURE_SOURCES.rglob("*.fixture"):
        dest = root / src.relative_to(FIXTURE_SOURCES).with_suffix("")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    return root


@pytest.fixture
def real_data(shared_data: Path) -> Path:
    """``../shared/data`` (the root conftest's ``shared_data``: skipped when absent)."""
    return shared_data


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the developer's data dir or cache; downloads land in tmp_path."""
    monkeypatch.delenv("POLLINATE_DATA_DIR", raising=False)
    monkeypatch.setenv("POLLINATE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def copy_fixture(tmp_path: Path, fixtures: Path):
    """Copy a fixture folder into ``tmp_path/<dest>/<name>`` and return the copy."""

    def copy(name: str, dest: str = "data") -> Path:
        target = tmp_path / dest / name
        shutil.copytree(fixtures / name, target)
        return target

    return copy
