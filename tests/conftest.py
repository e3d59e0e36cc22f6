"""What every test shares: where the real datasets are, and time limits of slow tests.

- ``shared_data`` (fixture) and ``SHARED_DATA``: the real datasets beside the checkout,
  ``../shared/data`` (the project's CI has them there). A test that needs them takes the
  fixture; when they are absent it is skipped with the
  reason (``-ra`` prints it), so a user's clone runs the rest of the suite.
- Slow tests (``@pytest.mark.slow`` or ``ray``: Flower/Ray simulations, audits) get a per-test time
  limit of :data:`SLOW_TIMEOUT_S` unless they set their own ``@pytest.mark.timeout``: a
  hung Ray worker fails its test in minutes instead of after the suite's 900-second cap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
#: The real datasets (``README.md``, ``SHA256SUMS`` and one folder per dataset).
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
#: Time limit of a slow test (setup included), unless it sets ``pytest.mark.timeout``.
SLOW_TIMEOUT_S = 300


def shared_data_or_skip(dataset: str | None = None) -> Path:
    """``SHARED_DATA``, or skip the calling test saying what is missing and why."""
    folder = SHARED_DATA if dataset is None else SHARED_DATA / dataset
    if not folder.is_dir():
        pytest.skip(
            f"needs the real datasets: {folder} is absent (the project's CI keeps them in "
            "../shared/data beside the checkout)"
        )
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """The real data folder ``../shared/data``; the test is skipped when it is absent."""
    return shared_data_or_skip()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        long = item.get_closest_marker("slow") or item.get_closest_marker("ray")
        if long and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))


@pytest.fixture
def chromium() -> tuple[str, str]:
    """Paths of Debian's headless Chromium and its driver, for the ``browser`` tests:
    skipped with the reason when they are missing, failed under CI (which installs them)."""
    import os
    import shutil

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver") or shutil.which("chromium-driver")
    if browser is None or driver is None:
        message = (
            "Debian's chromium and chromium-driver are not installed (make test installs them)"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: their absence is a failure there
        pytest.skip(message)
    return browser, driver
