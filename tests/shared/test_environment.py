"""The environment record that a run directory keeps beside its figures."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from pollinate.shared import environment
from pollinate.shared.environment import (
    ENVIRONMENT_FILE,
    describe_environment,
    record_environment,
)


def test_the_record_names_the_kernels_and_versions_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS", raising=False)
    monkeypatch.setenv("UNRELATED_VARIABLE", "x")
    env = describe_environment()
    assert env["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert env["torch_threads"] == torch.get_num_threads()
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["pollinate"] is not None
    # Only the variables that select kernels or thread pools are kept.
    assert env["env"]["ATEN_CPU_CAPABILITY"] == "avx2"
    assert "MKL_ENABLE_INSTRUCTIONS" not in env["env"]
    assert "UNRELATED_VARIABLE" not in env["env"]
    json.dumps(env)  # JSON-ready as it is


def test_a_missing_distribution_is_recorded_as_absent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(environment, "PACKAGES", ("torch", "no-such-distribution-xyz"))
    packages = describe_environment()["packages"]
    assert packages == {"torch": torch.__version__, "no-such-distribution-xyz": None}


def test_a_resumed_run_appends_and_a_fresh_run_starts_over(tmp_path: Path) -> None:
    record_environment(tmp_path)
    record_environment(tmp_path, resumed=True)
    runs = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["runs"]
    assert [r["resumed"] for r in runs] == [False, True]
    record_environment(tmp_path)
    runs = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["runs"]
    assert [r["resumed"] for r in runs] == [False]


def test_a_damaged_record_is_kept_aside_and_does_not_stop_a_resume(tmp_path: Path) -> None:
    (tmp_path / ENVIRONMENT_FILE).write_text("{not json")
    record_environment(tmp_path, resumed=True)
    runs = json.loads((tmp_path / ENVIRONMENT_FILE).read_text())["runs"]
    assert [r["resumed"] for r in runs] == [True]
    assert (tmp_path / "environment.json.damaged").read_text() == "{not json"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_the_code_revision_is_the_commit_that_tracks_the_module(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    git("init", "-q")
    module = tmp_path / "mod.py"
    module.write_text("x = 1\n")
    git("add", "mod.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "c")
    head = git("rev-parse", "HEAD")
    assert environment._git_revision(module) == {"commit": head, "modified": False}
    module.write_text("x = 2\n")
    assert environment._git_revision(module) == {"commit": head, "modified": True}
    # A file the checkout does not track (an installed copy inside a checkout) has none.
    untracked = tmp_path / "site-packages" / "other.py"
    untracked.parent.mkdir()
    untracked.write_text("")
    assert environment._git_revision(untracked) is None
