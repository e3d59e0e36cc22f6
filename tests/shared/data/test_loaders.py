"""Each loader on a small fixture: exact values, remapping order and mapping back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pollinate.shared.data import (
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_csv,
    load_s3rec,
    load_table,
    remap_ids,
)
from pollinate.shared.data.loaders import ML1M_GENRES
from pollinate.shared.data.validation import remap
from pollinate.shared.errors import ChecksumError


def test_ml100k_rows_ids_genres_and_users(fixtures: Path) -> None:
    d = load_movielens_100k(fixtures / "ml-100k", verify=False)
    assert d.name == "ml-100k"
    # u.data: (3,10) (1,20) (3,20) (2,10) (1,30) -> ids in order of first appearance
    np.testing.assert_array_equal(d.user_ids, [3, 1, 2])
    np.testing.assert_array_equal(d.item_ids, [10, 20, 30])
    np.testing.assert_array_equal(d.users, [0, 1, 0, 2, 1])
    np.testing.assert_array_equal(d.items, [0, 1, 1, 0, 2])
    np.testing.assert_array_equal(d.user_ids[d.users], [3, 1, 3, 2, 1])
    np.testing.assert_array_equal(d.item_ids[d.items], [10, 20, 20, 10, 30])
    np.testing.assert_array_equal(d.ratings, [4.0, 5.0, 1.0, 3.0, 2.0])
    np.testing.assert_array_equal(
        d.timestamps, [881250949, 881250950, 881250951, 881250952, 881250953]
    )
    assert d.rating_scale == (1.0, 5.0)
    assert d.genre_names == ("unknown", "Action", "Comedy")
    # item 40 is in u.item but unrated: not in the id space
    np.testing.assert_array_equal(d.item_genres, [[0, 0, 1], [0, 1, 0], [1, 0, 0]])
    assert d.item_genres is not None and d.item_genres.dtype == bool
    np.testing.assert_array_equal(d.user_features["age"], [23, 24, 53])
    assert d.user_features["age"].dtype == np.int64
    np.testing.assert_array_equal(d.user_features["gender"], ["M", "M", "F"])
    np.testing.assert_array_equal(d.user_features["occupation"], ["writer", "technician", "other"])


def test_ml100k_checksum_of_a_modified_copy_fails(fixtures: Path) -> None:
    with pytest.raises(ChecksumError, match=r"u\.data.*SHA-256 mismatch.*verify=False"):
        load_movielens_100k(fixtures / "ml-100k")


def test_ml1m_rows_genres_and_users(fixtures: Path) -> None:
    d = load_movielens_1m(fixtures / "ml-1m", verify=False)
    np.testing.assert_array_equal(d.user_ids, [5, 7])
    np.testing.assert_array_equal(d.item_ids, [1193, 661])
    np.testing.assert_array_equal(d.users, [0, 0, 1])
    np.testing.assert_array_equal(d.items, [0, 1, 0])
    np.testing.assert_array_equal(d.ratings, [5.0, 3.0, 4.0])
    np.testing.assert_array_equal(d.timestamps, [978300760, 978302109, 978301968])
    assert d.genre_names == ML1M_GENRES
    assert d.item_genres is not None
    names = np.array(d.genre_names)
    assert list(names[d.item_genres[0]]) == ["Drama"]
    assert list(names[d.item_genres[1]]) == ["Animation", "Children's", "Musical"]
    np.testing.assert_array_equal(d.user_features["age"], [25, 1])
    np.testing.assert_array_equal(d.user_features["gender"], ["M", "F"])
    np.testing.assert_array_equal(d.user_features["occupation"], ["writer", "K-12 student"])


def test_ml1m_verify_checks_documented_counts(fixtures: Path) -> None:
    with pytest.raises(ChecksumError, match=r"ratings\.dat.*1,000,209 interactions.*has 3"):
        load_movielens_1m(fixtures / "ml-1m")


def test_movielens_csv_rows_and_genres(fixtures: Path) -> None:
    d = load_movielens_csv(fixtures / "ml-latest-small", verify=False)
    assert d.name == "ml-latest-small"
    np.testing.assert_array_equal(d.user_ids, [1, 2])
    np.testing.assert_array_equal(d.item_ids, [1, 3, 5])
    np.testing.assert_array_equal(d.users, [0, 0, 1, 1])
    np.testing.assert_array_equal(d.items, [0, 1, 0, 2])
    np.testing.assert_array_equal(d.ratings, [4.0, 4.5, 0.5, 3.0])
    np.testing.assert_array_equal(d.timestamps, [964982703, 964981247, 964982224, 964982300])
    assert d.rating_scale == (0.5, 5.0)
    assert d.genre_names == ("Adventure", "Animation", "Children", "Comedy", "Fantasy", "Romance")
    np.testing.assert_array_equal(
        d.item_genres,
        [
            [1, 1, 1, 1, 1, 0],  # Toy Story
            [0, 0, 0, 1, 0, 1],  # "Grumpier Old Men, The" (a quoted title with a comma)
            [0, 0, 0, 0, 0, 0],  # (no genres listed)
        ],
    )


def test_s3rec_sequences_are_implicit_in_file_order(fixtures: Path) -> None:
    d = load_s3rec(fixtures / "amazon-beauty", verify=False)
    assert d.name == "amazon-beauty"
    assert d.implicit and d.ratings is None and d.timestamps is None and d.rating_scale is None
    np.testing.assert_array_equal(d.user_ids, [1, 2, 3])
    np.testing.assert_array_equal(d.item_ids, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(d.users, [0, 0, 0, 1, 1, 2, 2, 2])
    # user 3 consumes item 5 twice in a row: implicit repeats are kept (duplicate policy)
    np.testing.assert_array_equal(d.items, [0, 1, 2, 3, 1, 4, 4, 0])


def test_s3rec_accepts_the_file_path(fixtures: Path) -> None:
    d = load_s3rec(fixtures / "amazon-beauty" / "Beauty.s3rec.txt", verify=False, name="beauty")
    assert d.name == "beauty" and d.n_interactions == 8


def test_table_csv_with_text_ids(fixtures: Path) -> None:
    d = load_table(
        fixtures / "table.csv",
        user_col="user",
        item_col="item",
        rating_col="score",
        timestamp_col="when",
    )
    assert d.name == "table"
    np.testing.assert_array_equal(d.user_ids, ["alice", "bob"])
    np.testing.assert_array_equal(d.item_ids, ["i9", "i3"])
    np.testing.assert_array_equal(d.users, [0, 1, 0])
    np.testing.assert_array_equal(d.items, [0, 1, 1])
    np.testing.assert_array_equal(d.ratings, [4.0, 2.0, 5.0])
    np.testing.assert_array_equal(d.timestamps, [100, 200, 300])
    assert d.rating_scale == (2.0, 5.0)  # inferred from the data when not given


def test_table_implicit_with_integer_ids_and_given_scale(tmp_path: Path) -> None:
    path = tmp_path / "events.tsv"
    path.write_text("u\ti\n7\t70\n8\t70\n7\t71\n7\t70\n")
    d = load_table(path, user_col="u", item_col="i", name="events")
    assert d.implicit and d.timestamps is None
    assert d.user_ids.dtype == np.int64
    np.testing.assert_array_equal(d.user_ids, [7, 8])
    np.testing.assert_array_equal(d.item_ids, [70, 71])
    np.testing.assert_array_equal(d.items, [0, 0, 1, 0])  # implicit repeat kept


def test_table_parquet_with_timestamp_column(tmp_path: Path) -> None:
    path = tmp_path / "events.parquet"
    table = pa.table(
        {
            "user": pa.array(["b", "a", "b"]),
            "item": pa.array([5, 6, 6], type=pa.int32()),
            "stars": pa.array([1, 5, 3], type=pa.int8()),
            "at": pa.array([1_000_000, 2_000_000, 3_000_500], type=pa.timestamp("ms")),
        }
    )
    pq.write_table(table, path)
    d = load_table(
        path,
        user_col="user",
        item_col="item",
        rating_col="stars",
        timestamp_col="at",
        rating_scale=(1, 5),
    )
    np.testing.assert_array_equal(d.user_ids, ["b", "a"])
    np.testing.assert_array_equal(d.item_ids, [5, 6])
    np.testing.assert_array_equal(d.ratings, [1.0, 5.0, 3.0])
    np.testing.assert_array_equal(d.timestamps, [1000, 2000, 3000])
    assert d.rating_scale == (1, 5)


@pytest.mark.parametrize(
    "raw",
    [
        np.random.default_rng(0).integers(0, 50, 1_000),
        np.array([3, -1, 3, 7, -1]),
        np.array(["b", "a", "b", "c"]),
        np.array([], dtype=np.int64),
    ],
)
def test_loader_remapping_equals_remap_ids(raw: np.ndarray) -> None:
    """Loaders remap with a hash (fast on 25M rows); it must agree with remap_ids."""
    index, ids = remap(raw)
    expected_index, expected_ids = remap_ids(raw)
    np.testing.assert_array_equal(index, expected_index)
    np.testing.assert_array_equal(ids, expected_ids)
    assert ids.dtype == expected_ids.dtype and index.dtype == np.int64
