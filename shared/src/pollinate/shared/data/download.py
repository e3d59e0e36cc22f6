"""Downloading a dataset archive into the cache, with a swappable transport.

The network is reached only through a :class:`Transport`: a callable that writes the
bytes at a URL into a file. Tests pass a fake one; the default,
:func:`urllib_transport`, uses the standard library. An archive is fetched and
extracted into a temporary folder inside the cache, its files are verified (SHA-256
where known), and only then is the folder moved into place, so a corrupt download never
lands in the cache.
"""

from __future__ import annotations

import logging
import shutil
import urllib.request
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import Protocol

from pollinate.shared.data.checksums import KNOWN_SHA256, verify_checksums
from pollinate.shared.errors import ChecksumError, DatasetError

logger = logging.getLogger(__name__)

DOWNLOAD_TIMEOUT_S = 60.0


class Transport(Protocol):
    """Fetches ``url`` into the file ``dest``; raises ``OSError`` when it cannot."""

    def __call__(self, url: str, dest: Path) -> None: ...


def urllib_transport(url: str, dest: Path) -> None:
    """The default transport: an HTTP(S) GET with the standard library."""
    request = urllib.request.Request(url, headers={"User-Agent": "pollinate"})
    with (
        urllib.request.urlopen(request, timeout=DOWNLOAD_TIMEOUT_S) as response,
        dest.open("wb") as out,
    ):
        shutil.copyfileobj(response, out, length=1 << 20)


class TransportError(OSError):
    """The transport could not fetch the archive (offline, HTTP error, ...)."""


def download_and_extract(
    dataset: str,
    url: str,
    cache_dir: Path,
    required_files: Sequence[str],
    *,
    transport: Transport,
    verify: bool = True,
) -> Path:
    """Fetch the zip at ``url``, extract it and move the dataset to ``cache_dir/dataset``.

    Raises :class:`TransportError` when the transport fails, :class:`ChecksumError` when
    the archive is not a valid zip or a file's SHA-256 differs, and
    :class:`DatasetError` when the archive lacks a required file.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir / f".download-{dataset}-{uuid.uuid4().hex}"
    tmp.mkdir()
    try:
        archive = tmp / f"{dataset}.zip"
        logger.info("downloading %s from %s into %s", dataset, url, cache_dir)
        try:
            transport(url, archive)
        except Exception as exc:
            raise TransportError(f"could not download {url}: {exc}") from exc
        extracted = tmp / "extracted"
        _extract_zip(archive, extracted, url)
        folder = _dataset_folder(extracted, dataset, required_files)
        missing = [f for f in required_files if not (folder / f).is_file()]
        if missing:
            raise DatasetError(
                f"{dataset}: the archive from {url} has no {', '.join(map(repr, missing))}",
                path=archive,
            )
        if verify:
            checked = verify_checksums(dataset, folder, required_files)
            if checked:
                logger.info("%s: SHA-256 verified for %s", dataset, ", ".join(checked))
            if dataset not in KNOWN_SHA256:
                logger.warning(
                    "%s: no SHA-256 of its files is known; the documented counts are "
                    "checked when it loads instead",
                    dataset,
                )
        target = cache_dir / dataset
        if target.exists():  # an incomplete earlier copy in our own cache
            shutil.rmtree(target)
        folder.rename(target)
        return target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _extract_zip(archive: Path, dest: Path, url: str) -> None:
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.infolist():
                parts = PurePosixPath(member.filename).parts
                if member.filename.startswith(("/", "\\")) or ".." in parts:
                    raise ChecksumError(
                        f"the archive from {url} has an unsafe member path "
                        f"{member.filename!r}; refusing to extract it",
                        path=archive,
                    )
            zf.extractall(dest)
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ChecksumError(
            f"the download from {url} is not a valid zip archive ({exc}); it may be "
            "truncated or corrupt. Try again, or download it by hand",
            path=archive,
        ) from exc


def _dataset_folder(extracted: Path, dataset: str, required_files: Sequence[str]) -> Path:
    """The folder of the extracted archive that holds the dataset's files."""
    named = extracted / dataset
    if named.is_dir():
        return named
    if required_files and (extracted / required_files[0]).is_file():
        return extracted
    subdirs = [p for p in extracted.iterdir() if p.is_dir()]
    if len(subdirs) == 1:
        return subdirs[0]
    return extracted
