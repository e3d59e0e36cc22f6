"""Downloading through a fake transport: never the network."""

from __future__ import annotations

import io
import logging
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pollinate.shared.data import find_dataset, load_dataset, load_movielens_1m
from pollinate.shared.errors import ChecksumError, DatasetNotFoundError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"


def _zip_folder(folder: Path, root: str | None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.iterdir()):
            zf.write(path, f"{root}/{path.name}" if root else path.name)
    return buf.getvalue()


class FakeTransport:
    """Serves ``payload`` for any URL and records the URLs asked for."""

    def __init__(self, payload: bytes):
        self.payload = payload
        self.urls: list[str] = []

    def __call__(self, url: str, dest: Path) -> None:
        self.urls.append(url)
        dest.write_bytes(self.payload)


def _offline(url: str, dest: Path) -> None:
    raise OSError("[Errno 101] Network is unreachable")


def test_download_extracts_into_the_cache_once(
    fixtures: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    transport = FakeTransport(_zip_folder(fixtures / "ml-1m", "ml-1m"))
    with caplog.at_level(logging.INFO, logger="pollinate.shared.data"):
        folder = find_dataset("ml-1m", tmp_path / "data", transport=transport)
    assert transport.urls == [GROUPLENS + "ml-1m.zip"]
    assert folder == tmp_path / "cache" / "ml-1m"
    assert sorted(p.name for p in folder.iterdir()) == ["movies.dat", "ratings.dat", "users.dat"]
    assert "no SHA-256 of its files is known" in caplog.text
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["ml-1m"]  # no temp left
    data = load_movielens_1m(folder, verify=False)
    np.testing.assert_array_equal(data.user_ids, [5, 7])
    # second time: found in the cache, no download
    assert find_dataset("ml-1m", tmp_path / "data", transport=_offline) == folder


def test_download_of_an_archive_without_a_top_folder(fixtures: Path, tmp_path: Path) -> None:
    transport = FakeTransport(_zip_folder(fixtures / "ml-1m", None))
    folder = find_dataset("ml-1m", transport=transport)
    assert (folder / "ratings.dat").read_bytes() == (
        fixtures / "ml-1m" / "ratings.dat"
    ).read_bytes()


def test_download_verifies_and_loads_real_ml100k(real_data: Path, tmp_path: Path) -> None:
    transport = FakeTransport(_zip_folder(real_data / "ml-100k", "ml-100k"))
    data = load_dataset("ml-100k", tmp_path / "empty", transport=transport)
    assert transport.urls == [GROUPLENS + "ml-100k.zip"]
    assert (data.n_interactions, data.n_users, data.n_items) == (100_000, 943, 1_682)


def test_corrupted_download_raises_checksum_error_and_leaves_nothing(
    fixtures: Path, tmp_path: Path
) -> None:
    # A valid zip whose u.data is not the original file.
    transport = FakeTransport(_zip_folder(fixtures / "ml-100k", "ml-100k"))
    with pytest.raises(ChecksumError, match=r"u\.data.*SHA-256 mismatch for ml-100k"):
        load_dataset("ml-100k", transport=transport)
    cache = tmp_path / "cache"
    assert not cache.exists() or list(cache.iterdir()) == []


def test_truncated_download_is_not_a_zip(fixtures: Path, tmp_path: Path) -> None:
    payload = _zip_folder(fixtures / "ml-1m", "ml-1m")
    transport = FakeTransport(payload[: len(payload) // 2])
    with pytest.raises(ChecksumError, match="not a valid zip archive"):
        load_dataset("ml-1m", transport=transport)
    assert list((tmp_path / "cache").iterdir()) == []


def test_zip_with_unsafe_paths_is_refused(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    with pytest.raises(ChecksumError, match="unsafe member path"):
        load_dataset("ml-1m", transport=FakeTransport(buf.getvalue()))
    assert not (tmp_path / "evil.txt").exists()


def test_archive_without_the_files(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ml-1m/README", "nothing here")
    with pytest.raises(Exception, match=r"archive .* has no 'ratings.dat'"):
        load_dataset("ml-1m", transport=FakeTransport(buf.getvalue()))


def test_offline_says_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("ml-latest-small", tmp_path / "data", transport=_offline)
    message = str(excinfo.value)
    assert "Network is unreachable" in message
    assert GROUPLENS + "ml-latest-small.zip" in message
    assert str(tmp_path / "data" / "ml-latest-small") in message
    assert str(tmp_path / "cache") in message
    assert "--data-dir" in message and "POLLINATE_DATA_DIR" in message
