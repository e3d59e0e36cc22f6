"""Known SHA-256 checksums and documented counts of the datasets Pollinate loads.

The checksums are those of the original files (the project's reference copies, see the
``SHA256SUMS`` beside the shared data folder). For MovieLens 1M and 25M no checksum of
the extracted files is known here; for those the loaders check the counts that
GroupLens documents instead (and say so in the log).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import MappingProxyType

from pollinate.shared.errors import ChecksumError

logger = logging.getLogger(__name__)

KNOWN_SHA256: Mapping[str, Mapping[str, str]] = MappingProxyType(
    {
        "amazon-beauty": MappingProxyType(
            {
                "Beauty.s3rec.txt": "226cce9c3105299ca0db9615d7d3fb32"
                "b3175e90da43100ae352599f0f0107b8",
                "ICLRec.LICENSE.txt": "0f3764c856b8d4e6e1aa275bce9f3492"
                "5a7b0612172c6b57713b5c0f1dab0a6e",
            }
        ),
        "ml-100k": MappingProxyType(
            {
                "README": "4883b8cf340ed0059971b33f56ad3adc88a40792108ebca3d24aafc4c82e8b52",
                "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
                "u.genre": "9757e0d3e6b298159a80dd48eaf938114690e911e39af97a76949ef1663610bb",
                "u.info": "5b0a40b2e47a729ee6203063f6dcf8790c2e63f5a18663e6ee318a72c5f3c27b",
                "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
                "u.occupation": "cd5fbec9afe345d993a62fc7817df1a4a9079c4feb267b3118763b8fd942137d",
                "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
            }
        ),
        "ml-latest-small": MappingProxyType(
            {
                "README.txt": "e165937702ae1fac9237b6bd377f03d027f7ef97175d4a04a203e8b12d5516ea",
                "links.csv": "97ad18e4e56a09363c65676b6cb3482ce3e2cea2372a24620c1599c843325f31",
                "movies.csv": "5a5f32dd9bb3797b8e728a1b98958789d2b13f294a69fdfbc5727f8a9611aa07",
                "ratings.csv": "aa289ca83157595d0df6aea1be6a4ded676ddc4385472e8313a8ed9805352646",
                "tags.csv": "92a9f8bb7916dceef6151209845788c3643f794dfa79d1feaec7121b5960399d",
            }
        ),
    }
)
"""SHA-256 of each known file, by dataset folder and file name."""

DOCUMENTED_COUNTS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "ml-100k": MappingProxyType({"interactions": 100_000, "users": 943, "items": 1_682}),
        "ml-1m": MappingProxyType({"interactions": 1_000_209, "users": 6_040, "items": 3_706}),
        "ml-latest-small": MappingProxyType(
            {"interactions": 100_836, "users": 610, "items": 9_724}
        ),
        "ml-25m": MappingProxyType({"interactions": 25_000_095, "users": 162_541}),
        "amazon-beauty": MappingProxyType(
            {"interactions": 198_502, "users": 22_363, "items": 12_101}
        ),
    }
)
"""Counts that the datasets' documentation states (items: items with at least one row)."""


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def verify_checksums(dataset: str, folder: Path, files: Iterable[str]) -> list[str]:
    """Check the SHA-256 of each of ``files`` in ``folder`` whose checksum is known.

    Returns the names that were checked. Raises :class:`ChecksumError` naming the first
    file that does not match.
    """
    known = KNOWN_SHA256.get(dataset, {})
    checked = []
    for name in files:
        expected = known.get(name)
        if expected is None:
            continue
        path = folder / name
        actual = sha256_file(path)
        if actual != expected:
            raise ChecksumError(
                f"SHA-256 mismatch for {dataset}: expected {expected}, got {actual}. The file "
                "is corrupt or is not the original release; delete the folder to download it "
                "again, or pass verify=False to load a modified copy on purpose",
                path=path,
            )
        checked.append(name)
    return checked


def verify_counts(dataset: str, counts: Mapping[str, int], path: Path) -> None:
    """Compare ``counts`` with :data:`DOCUMENTED_COUNTS` (where the dataset has them).

    Raises :class:`ChecksumError` naming ``path`` when a documented count differs.
    """
    documented = DOCUMENTED_COUNTS.get(dataset, {})
    for key, expected in documented.items():
        actual = counts.get(key)
        if actual is not None and actual != expected:
            raise ChecksumError(
                f"{dataset} should have {expected:,} {key} (as GroupLens documents it) but "
                f"has {actual:,}: the files are incomplete or modified. Delete the folder to "
                "download it again, or pass verify=False to load a modified copy on purpose",
                path=path,
            )
    if documented and dataset not in KNOWN_SHA256:
        logger.info(
            "%s: no SHA-256 of the extracted files is known; verified the documented counts "
            "(%s) instead",
            dataset,
            ", ".join(f"{v:,} {k}" for k, v in documented.items()),
        )
