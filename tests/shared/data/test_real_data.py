"""The real datasets beside the repository (skipped when the folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pollinate.shared.data import KNOWN_SHA256, dataset_info, load_dataset, sha256_file
from pollinate.shared.data.checksums import verify_checksums


def test_embedded_checksums_match_sha256sums(real_data: Path) -> None:
    listed = {}
    for line in (real_data / "SHA256SUMS").read_text().splitlines():
        digest, rel = line.split()
        folder, name = rel.split("/")
        listed[(folder, name)] = digest
    embedded = {(f, n): d for f, files in KNOWN_SHA256.items() for n, d in files.items()}
    assert embedded == listed


def test_files_match_their_checksums(real_data: Path) -> None:
    for folder, files in KNOWN_SHA256.items():
        for name, digest in files.items():
            assert sha256_file(real_data / folder / name) == digest, f"{folder}/{name}"
    assert verify_checksums("ml-100k", real_data / "ml-100k", ["u.data", "u.item", "x"]) == [
        "u.data",
        "u.item",
    ]


def test_ml100k(real_data: Path) -> None:
    d = load_dataset("ml-100k", real_data)  # verifies the checksums
    assert (d.n_interactions, d.n_users, d.n_items) == (100_000, 943, 1_682)
    assert len(d.genre_names) == 19 and d.genre_names[:2] == ("unknown", "Action")
    assert d.item_genres is not None and d.item_genres.shape == (1_682, 19)
    # first line of u.data: 196 242 3 881250949
    assert (d.user_ids[d.users[0]], d.item_ids[d.items[0]]) == (196, 242)
    assert (d.ratings is not None) and d.ratings[0] == 3.0
    assert d.timestamps is not None and d.timestamps[0] == 881250949
    toy_story = int(np.flatnonzero(d.item_ids == 1)[0])
    names = np.array(d.genre_names)[d.item_genres[toy_story]]
    assert list(names) == ["Animation", "Children's", "Comedy"]
    assert set(d.user_features) == {"age", "gender", "occupation"}
    u196 = int(np.flatnonzero(d.user_ids == 196)[0])
    assert d.user_features["age"][u196] == 49
    assert d.user_features["occupation"][u196] == "writer"
    info = dataset_info(d)
    assert info["rating_range"] == [1.0, 5.0]
    assert info["time_span"] == ["1997-09-20", "1998-04-22"]


def test_ml_latest_small(real_data: Path) -> None:
    d = load_dataset("ml-latest-small", real_data)
    assert (d.n_interactions, d.n_users, d.n_items) == (100_836, 610, 9_724)
    assert d.rating_scale == (0.5, 5.0)
    assert d.ratings is not None
    np.testing.assert_array_equal(np.unique(d.ratings), np.arange(1, 11) / 2)
    assert len(d.genre_names) == 19 and "IMAX" in d.genre_names
    assert d.item_genres is not None
    assert int((d.item_genres.sum(axis=1) == 0).sum()) == 34  # "(no genres listed)"


def test_amazon_beauty_via_the_environment(
    real_data: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POLLINATE_DATA_DIR", str(real_data))
    d = load_dataset("amazon-beauty")
    assert (d.n_interactions, d.n_users, d.n_items) == (198_502, 22_363, 12_101)
    assert d.implicit and d.timestamps is None
    np.testing.assert_array_equal(d.item_ids[:6], [1, 2, 3, 4, 5, 6])
    assert dataset_info(d)["time_span"] == "file order (no timestamps)"
