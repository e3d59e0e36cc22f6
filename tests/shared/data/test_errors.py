"""Validation: every error names the file, the line and the problem."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pollinate.shared.data import (
    Interactions,
    load_dataset,
    load_movielens_1m,
    load_movielens_100k,
    load_movielens_csv,
    load_s3rec,
    load_table,
    validate_interactions,
)
from pollinate.shared.errors import ConfigError, DatasetError, DatasetNotFoundError

GOOD_UDATA = "3\t10\t4\t881250949\n1\t20\t5\t881250950\n3\t20\t1\t881250951\n"
RATINGS_HEADER = "userId,movieId,rating,timestamp\n"


def _ml100k(copy_fixture, u_data: str) -> Path:
    folder = copy_fixture("ml-100k")
    (folder / "u.data").write_text(u_data)
    return folder


def _ml_csv(copy_fixture, ratings: str) -> Path:
    folder = copy_fixture("ml-latest-small")
    (folder / "ratings.csv").write_text(ratings)
    return folder


def _error(excinfo: pytest.ExceptionInfo[DatasetError], path: Path, line: int | None) -> str:
    err = excinfo.value
    assert Path(str(err.path)) == path
    assert err.line == line
    if line is not None:
        assert f"{path}, line {line}: " in str(err)
    return str(err)


# ------------------------------------------------------------------ missing files


def test_missing_file_names_the_path_and_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_movielens_100k(folder)
    message = _error(excinfo, folder / "u.data", None)
    assert "'u.data'" in message and str(folder) in message
    assert "--data-dir" in message and "POLLINATE_DATA_DIR" in message


def test_load_dataset_names_every_folder_searched(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("ml-100k", tmp_path / "mine", download=False)
    message = str(excinfo.value)
    assert str(tmp_path / "mine" / "ml-100k") in message
    assert str(tmp_path / "cache" / "ml-100k") in message
    assert "https://files.grouplens.org/datasets/movielens/ml-100k.zip" in message
    assert "--data-dir" in message and "POLLINATE_DATA_DIR" in message


def test_amazon_beauty_explains_where_to_get_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError) as excinfo:
        load_dataset("amazon-beauty", tmp_path)
    message = str(excinfo.value)
    assert "No official single-file URL" in message
    assert "amazon-beauty/Beauty.s3rec.txt" in message
    assert str(tmp_path / "amazon-beauty") in message


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown dataset 'ml-5m'.*synthetic.*ml-100k"):
        load_dataset("ml-5m")


# ------------------------------------------------------------------ malformed lines


@pytest.mark.parametrize(
    ("u_data", "line", "problem"),
    [
        (GOOD_UDATA + "2\t10\t3\n", 4, r"expected 4 fields .* found 3"),
        (GOOD_UDATA + "2\t10\t3\t881250952\t7\n", 4, r"expected 4 fields .* found 5"),
        ("3\t10\t4\t881250949\n1\tx20\t5\t881250950\n", 2, r"column 'item': cannot parse 'x20'"),
        (GOOD_UDATA + "2\t10\t3\t88125.5\n", 4, r"'timestamp': cannot parse '88125.5'"),
        (GOOD_UDATA + "2\t10\t\t881250952\n", 4, r"'rating': empty value"),
        # blank lines are skipped but still counted
        ("3\t10\t4\t881250949\n\n\n1\t20\tfive\t881250950\n", 4, r"'rating': cannot parse 'five'"),
        ("3\t10\t4\t881250949\n   \n", 2, r"expected 4 fields .* found 1"),
    ],
)
def test_malformed_line_reports_its_number(copy_fixture, u_data, line, problem) -> None:
    folder = _ml100k(copy_fixture, u_data)
    with pytest.raises(DatasetError, match=problem) as excinfo:
        load_movielens_100k(folder, verify=False)
    _error(excinfo, folder / "u.data", line)


def test_wrong_columns_names_found_and_missing(copy_fixture) -> None:
    folder = _ml_csv(copy_fixture, "user,movieId,rating,timestamp\n1,1,4.0,1\n")
    with pytest.raises(DatasetError, match=r"wrong columns: missing 'userId'.*'user'") as excinfo:
        load_movielens_csv(folder, verify=False)
    _error(excinfo, folder / "ratings.csv", 1)


def test_csv_line_with_too_many_fields(copy_fixture) -> None:
    folder = _ml_csv(copy_fixture, RATINGS_HEADER + "1,1,4.0,1\n1,3,4.0,2,9\n")
    with pytest.raises(DatasetError, match="expected 4 fields") as excinfo:
        load_movielens_csv(folder, verify=False)
    _error(excinfo, folder / "ratings.csv", 3)


def test_invalid_utf8_names_the_line(copy_fixture) -> None:
    folder = copy_fixture("ml-latest-small")
    (folder / "ratings.csv").write_bytes(
        RATINGS_HEADER.encode() + b"1,1,4.0,1\n1,3,4.0,2\n2,\xff,1.0,3\n"
    )
    with pytest.raises(DatasetError, match="not valid utf-8") as excinfo:
        load_movielens_csv(folder, verify=False)
    _error(excinfo, folder / "ratings.csv", 4)


def test_ml1m_double_colon_lines(copy_fixture) -> None:
    folder = copy_fixture("ml-1m")
    (folder / "ratings.dat").write_text("5::1193::5::978300760\n5::661::3\n")
    with pytest.raises(DatasetError, match=r"expected 4 fields separated by '::'") as excinfo:
        load_movielens_1m(folder, verify=False)
    _error(excinfo, folder / "ratings.dat", 2)


def test_item_file_missing_a_rated_item(copy_fixture) -> None:
    folder = _ml100k(copy_fixture, GOOD_UDATA + "2\t99\t3\t881250952\n")
    with pytest.raises(DatasetError, match=r"1 movies .* missing .* \(first: 99\)") as excinfo:
        load_movielens_100k(folder, verify=False)
    _error(excinfo, folder / "u.item", None)


def test_item_file_bad_genre_flag(copy_fixture) -> None:
    folder = copy_fixture("ml-100k")
    (folder / "u.item").write_text("10|A|x||u|0|0|1\n20|B|x||u|0|2|0\n30|C|x||u|1|0|0\n")
    with pytest.raises(DatasetError, match="genre flag '2'") as excinfo:
        load_movielens_100k(folder, verify=False)
    _error(excinfo, folder / "u.item", 2)


@pytest.mark.parametrize(
    ("content", "line", "problem"),
    [
        ("1 1 2\n2 4 x5\n", 2, r"cannot parse 'x5'"),
        ("1 1 2\n\n2\n", 3, r"user 2 has no items"),
        ("1 1 2\n2 3\n1 4\n", 3, r"user 1 appears again \(first on line 1\)"),
    ],
)
def test_s3rec_errors(tmp_path: Path, content: str, line: int, problem: str) -> None:
    path = tmp_path / "Beauty.s3rec.txt"
    path.write_text(content)
    with pytest.raises(DatasetError, match=problem) as excinfo:
        load_s3rec(path, verify=False)
    _error(excinfo, path, line)


def test_empty_file_has_no_interactions(copy_fixture) -> None:
    folder = _ml_csv(copy_fixture, RATINGS_HEADER)
    with pytest.raises(DatasetError, match="no interactions"):
        load_movielens_csv(folder, verify=False)


# ------------------------------------------------------------------ ratings


@pytest.mark.parametrize("nan", ["nan", "NaN"])
def test_nan_rating(copy_fixture, nan: str) -> None:
    folder = _ml_csv(copy_fixture, RATINGS_HEADER + f"1,1,4.0,1\n1,3,{nan},2\n")
    with pytest.raises(DatasetError, match=r"'rating'.*NaN") as excinfo:
        load_movielens_csv(folder, verify=False)
    _error(excinfo, folder / "ratings.csv", 3)


@pytest.mark.parametrize(
    ("u_data", "line", "shown"),
    [
        ("3\t10\t4\t881250949\n1\t20\t6\t881250950\n", 2, "6"),
        ("3\t10\t0\t881250949\n", 1, "0"),
        # after blank lines the line number is found by scanning the file
        ("3\t10\t4\t881250949\n\n1\t20\t5\t881250950\n\n3\t20\t5.5\t881250951\n", 5, "5.5"),
        ("3\t10\t4\t881250949\n1\t20\tinf\t881250950\n", 2, None),
    ],
)
def test_out_of_range_rating(copy_fixture, u_data: str, line: int, shown: str | None) -> None:
    folder = _ml100k(copy_fixture, u_data)
    with pytest.raises(DatasetError) as excinfo:
        load_movielens_100k(folder, verify=False)
    message = _error(excinfo, folder / "u.data", line)
    if shown is None:
        assert "rating is inf" in message
    else:
        assert f"rating {shown} is outside the rating scale 1..5 of ml-100k" in message


def test_half_star_below_scale(copy_fixture) -> None:
    folder = _ml_csv(copy_fixture, RATINGS_HEADER + "1,1,4.0,1\n1,3,0.0,2\n")
    with pytest.raises(DatasetError, match=r"rating 0 is outside the rating scale 0.5..5"):
        load_movielens_csv(folder, verify=False)


def test_parquet_null_rating_names_the_row(tmp_path: Path) -> None:
    path = tmp_path / "r.parquet"
    pq.write_table(pa.table({"u": [1, 2, 3], "i": [1, 1, 2], "r": [1.0, None, 3.0]}), path)
    with pytest.raises(DatasetError, match=r"row 2: column 'r' is missing") as excinfo:
        load_table(path, user_col="u", item_col="i", rating_col="r")
    _error(excinfo, path, None)


def test_table_missing_column(fixtures: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing 'rating'.*'score'"):
        load_table(fixtures / "table.csv", user_col="user", item_col="item", rating_col="rating")


# ------------------------------------------------------------------ duplicates


DUP_UDATA = (
    "3\t10\t4\t881250949\n"
    "1\t20\t5\t881250950\n"
    "3\t10\t4\t881250955\n"  # same user and item, another time: not a duplicate
    "1\t20\t3\t881250950\n"  # same (user, item, timestamp) as line 2
    "2\t10\t3\t881250952\n"
    "3\t10\t2\t881250949\n"  # same as line 1
)


def test_duplicates_raise_by_default(copy_fixture) -> None:
    folder = _ml100k(copy_fixture, DUP_UDATA)
    with pytest.raises(DatasetError) as excinfo:
        load_movielens_100k(folder, verify=False)
    message = _error(excinfo, folder / "u.data", 4)
    assert "duplicate interaction (user 1, item 20, timestamp 881250950) repeats line 2" in message
    assert "duplicates='keep-first'" in message


def test_duplicates_keep_first(copy_fixture) -> None:
    folder = _ml100k(copy_fixture, DUP_UDATA)
    d = load_movielens_100k(folder, verify=False, duplicates="keep-first")
    assert d.n_interactions == 4
    np.testing.assert_array_equal(d.user_ids[d.users], [3, 1, 3, 2])
    np.testing.assert_array_equal(d.ratings, [4.0, 5.0, 4.0, 3.0])  # first copies kept
    np.testing.assert_array_equal(d.timestamps, [881250949, 881250950, 881250955, 881250952])


def test_explicit_ratings_without_timestamps_duplicate_on_pair(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_text("u,i,r\n1,1,4\n1,2,3\n1,1,5\n")
    with pytest.raises(DatasetError, match=r"\(user, item\) are duplicates") as excinfo:
        load_table(path, user_col="u", item_col="i", rating_col="r")
    _error(excinfo, path, 4)
    d = load_table(path, user_col="u", item_col="i", rating_col="r", duplicates="keep-first")
    np.testing.assert_array_equal(d.ratings, [4.0, 3.0])


def test_unknown_duplicate_policy() -> None:
    with pytest.raises(ConfigError, match="duplicates must be one of 'error', 'keep-first'"):
        load_dataset("synthetic", duplicates="keep-last")  # type: ignore[arg-type]


# ------------------------------------------------------------------ validate_interactions


def _tiny(**kw) -> Interactions:
    base = dict(
        name="tiny",
        users=np.array([0, 0, 1]),
        items=np.array([0, 1, 1]),
        ratings=np.array([1.0, 2.0, 3.0]),
        timestamps=np.array([1, 2, 3]),
        user_ids=np.array([10, 11]),
        item_ids=np.array([20, 21]),
        rating_scale=(1.0, 5.0),
    )
    base.update(kw)
    return Interactions(**base)  # type: ignore[arg-type]


def test_validate_interactions_accepts_clean_data() -> None:
    validate_interactions(_tiny())


def test_validate_interactions_finds_users_and_items_without_rows() -> None:
    data = _tiny()
    with pytest.raises(DatasetError, match=r"1 users have no interactions \(ids 10\)"):
        validate_interactions(data.rows(np.array([2])))
    with pytest.raises(DatasetError, match=r"1 items have no interactions \(ids 20\)"):
        validate_interactions(data.rows(np.array([1, 2])))


def test_validate_interactions_checks_ratings_and_duplicates() -> None:
    with pytest.raises(DatasetError, match=r"row 3: rating 7 is outside"):
        validate_interactions(_tiny(ratings=np.array([1.0, 2.0, 7.0])))
    with pytest.raises(DatasetError, match=r"row 2: rating is NaN"):
        validate_interactions(_tiny(ratings=np.array([1.0, np.nan, 2.0])))
    with pytest.raises(
        DatasetError, match=r"row 2: .*duplicate interaction of user 10 and item 20"
    ):
        validate_interactions(_tiny(items=np.array([0, 0, 1]), timestamps=np.array([1, 1, 3])))


# ------------------------------------------------------------------ text edge cases


def test_crlf_and_bom_keep_line_numbers_right(tmp_path: Path) -> None:
    path = tmp_path / "r.csv"
    path.write_bytes("\ufeffu,i,r\r\n1,2,3\r\n\r\n2,3,9\r\n".encode())
    with pytest.raises(DatasetError, match=r"rating 9 is outside the rating scale 1\.\.5") as exc:
        load_table(path, user_col="u", item_col="i", rating_col="r", rating_scale=(1, 5))
    _error(exc, path, 4)
    path.write_bytes("\ufeffu,i,r\r\n1,2,3\r\n2,3,4\r\n".encode())
    d = load_table(path, user_col="u", item_col="i", rating_col="r")
    np.testing.assert_array_equal(d.user_ids, [1, 2])


def test_incomplete_folder_says_which_files_it_lacks(copy_fixture, tmp_path: Path) -> None:
    folder = copy_fixture("ml-100k")
    (folder / "u.user").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"the folder lacks u\.user"):
        load_dataset("ml-100k", tmp_path / "data", download=False)
