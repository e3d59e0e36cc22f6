"""Library versions, as run directories and the privacy ledger record them."""

from __future__ import annotations

from importlib.metadata import version

from pollinate.shared.privacy.ledger import LEDGER_LIBRARIES, library_versions
from pollinate.shared.versions import package_version


def test_installed_and_absent_distributions() -> None:
    assert package_version("torch") == version("torch")
    assert package_version("no-such-distribution-xyz") is None


def test_the_ledger_stamps_the_installed_versions() -> None:
    assert library_versions() == {lib: version(lib) for lib in LEDGER_LIBRARIES}
    # Each event gets its own dict: one event's record cannot change another's.
    assert library_versions() is not library_versions()
