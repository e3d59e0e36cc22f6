"""Loaders of the dataset formats Pollinate knows, each returning :class:`Interactions`.

Every loader keeps rows in file order and maps ids to contiguous integers in order of
first appearance (:func:`~pollinate.shared.data.types.remap_ids`); ``user_ids`` and
``item_ids`` map them back. Errors name the file, the 1-based line and the problem.
The duplicate policy is described in :mod:`pollinate.shared.data.validation`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pollinate.shared.data._text import ColumnKind, read_table
from pollinate.shared.data.checksums import verify_checksums, verify_counts
from pollinate.shared.data.types import Interactions
from pollinate.shared.data.validation import (
    ArrayRows,
    CheckedRows,
    DuplicatePolicy,
    LineNumbers,
    RowLocator,
    check_rows,
    row_error,
)
from pollinate.shared.errors import DatasetError, DatasetNotFoundError

ML100K_FILES = ("u.data", "u.item", "u.genre", "u.user")
ML1M_FILES = ("ratings.dat", "movies.dat", "users.dat")
MLCSV_FILES = ("ratings.csv", "movies.csv")
S3REC_FILE = "Beauty.s3rec.txt"

ML1M_GENRES = (
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
#: MovieLens 1M occupation codes (``users.dat``), as its README lists them.
ML1M_OCCUPATIONS = (
    "other",
    "academic/educator",
    "artist",
    "clerical/admin",
    "college/grad student",
    "customer service",
    "doctor/health care",
    "executive/managerial",
    "farmer",
    "homemaker",
    "K-12 student",
    "lawyer",
    "programmer",
    "retired",
    "sales/marketing",
    "scientist",
    "self-employed",
    "technician/engineer",
    "tradesman/craftsman",
    "unemployed",
    "writer",
)
NO_GENRES = "(no genres listed)"


def require_files(dataset: str, folder: Path, files: Sequence[str]) -> None:
    """Raise :class:`DatasetNotFoundError` naming the first of ``files`` missing."""
    for name in files:
        path = folder / name
        if not path.is_file():
            raise DatasetNotFoundError(
                f"{dataset}: missing file {name!r} in {folder}. Put the {dataset} files "
                f"({', '.join(files)}) there, or point Pollinate at the data directory that "
                f"holds a '{dataset}/' folder with --data-dir or the POLLINATE_DATA_DIR "
                "environment variable",
                path=path,
            )


def _interactions(
    name: str,
    rows: CheckedRows,
    *,
    rating_scale: tuple[float, float] | None,
    item_genres: np.ndarray | None = None,
    genre_names: tuple[str, ...] = (),
    user_features: dict[str, np.ndarray] | None = None,
) -> Interactions:
    return Interactions(
        name=name,
        users=rows.users,
        items=rows.items,
        ratings=rows.ratings,
        timestamps=rows.timestamps,
        user_ids=rows.user_ids,
        item_ids=rows.item_ids,
        item_genres=item_genres,
        genre_names=genre_names,
        rating_scale=rating_scale,
        user_features=user_features or {},
    )


def _lookup(
    ids: np.ndarray, table_ids: np.ndarray, what: str, path: Path, dataset: str
) -> np.ndarray:
    """Positions of ``ids`` in ``table_ids``; every id must be there."""
    order = np.argsort(table_ids, kind="stable")
    pos = np.searchsorted(table_ids[order], ids)
    pos = np.minimum(pos, len(order) - 1)
    found = table_ids[order][pos] == ids if len(order) else np.zeros(len(ids), dtype=bool)
    if not found.all():
        missing = ids[~found]
        raise DatasetError(
            f"{dataset}: {len(missing)} {what} that have interactions are missing from this "
            f"file (first: {missing[0]})",
            path=path,
        )
    return order[pos]


def _text_lines(path: Path, encoding: str) -> list[tuple[int, str]]:
    """Non-empty lines of a small file with their 1-based numbers."""
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"not valid {encoding} text: {exc.reason}", path=path, line=bad_line
        ) from exc
    out: list[tuple[int, str]] = []
    for n, raw in enumerate(text.split("\n"), start=1):
        line = raw.rstrip("\r")
        if line:
            out.append((n, line))
    return out


def _parse_int(text: str, what: str, path: Path, line: int) -> int:
    try:
        return int(text.strip(), 10)
    except ValueError:
        raise DatasetError(
            f"{what}: cannot parse {text!r} as an integer", path=path, line=line
        ) from None


def _check_unique_ids(ids: list[int], lines: list[int], path: Path, what: str) -> None:
    seen: dict[int, int] = {}
    for i, line in zip(ids, lines, strict=True):
        if i in seen:
            raise DatasetError(
                f"{what} {i} appears again (first on line {seen[i]})", path=path, line=line
            )
        seen[i] = line


# ---------------------------------------------------------------- MovieLens 100K


def load_movielens_100k(
    folder: Path | str, *, verify: bool = True, duplicates: DuplicatePolicy = "error"
) -> Interactions:
    """MovieLens 100K from its original files in ``folder``.

    ``u.data`` (``user\\titem\\trating\\ttimestamp``) gives the rows; ``u.genre`` the 19
    genre names (``unknown`` included); ``u.item`` (latin-1, ``|``-separated, the last 19
    fields are genre flags) the genres of each item; ``u.user``
    (``id|age|gender|occupation|zip``) the ``user_features`` ``age`` (int), ``gender``
    and ``occupation``, aligned with the internal user ids. Ratings are 1..5 stars.
    With ``verify`` the SHA-256 of the four files is checked first.
    """
    dataset = "ml-100k"
    folder = Path(folder)
    require_files(dataset, folder, ML100K_FILES)
    if verify:
        verify_checksums(dataset, folder, ML100K_FILES)
    path = folder / "u.data"
    cols, source = read_table(
        path,
        sep="\t",
        header=False,
        field_names=("user", "item", "rating", "timestamp"),
        columns={"user": "int", "item": "int", "rating": "float", "timestamp": "int"},
    )
    rows = check_rows(
        dataset=dataset,
        users_raw=cols["user"],
        items_raw=cols["item"],
        ratings=cols["rating"],
        timestamps=cols["timestamp"],
        rating_scale=(1.0, 5.0),
        duplicates=duplicates,
        where=source,
    )
    genre_names = _ml100k_genres(folder / "u.genre")
    genres = _ml100k_item_genres(folder / "u.item", rows.item_ids, genre_names, dataset)
    features = _ml100k_users(folder / "u.user", rows.user_ids, dataset)
    return _interactions(
        dataset,
        rows,
        rating_scale=(1.0, 5.0),
        item_genres=genres,
        genre_names=genre_names,
        user_features=features,
    )


def _ml100k_genres(path: Path) -> tuple[str, ...]:
    names: list[str] = []
    for n, line in _text_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) != 2:
            raise DatasetError(f"expected 'name|index', found {line!r}", path=path, line=n)
        index = _parse_int(fields[1], "genre index", path, n)
        if index != len(names):
            raise DatasetError(
                f"genre indices must count up from 0; expected {len(names)}, found {index}",
                path=path,
                line=n,
            )
        names.append(fields[0])
    if not names:
        raise DatasetError("no genres listed", path=path)
    return tuple(names)


def _ml100k_item_genres(
    path: Path, item_ids: np.ndarray, genre_names: tuple[str, ...], dataset: str
) -> np.ndarray:
    n_genres = len(genre_names)
    ids: list[int] = []
    lines: list[int] = []
    flags: list[list[bool]] = []
    for n, line in _text_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) < 1 + n_genres:
            raise DatasetError(
                f"expected an id, movie fields and {n_genres} genre flags separated by '|', "
                f"found {len(fields)} fields",
                path=path,
                line=n,
            )
        ids.append(_parse_int(fields[0], "movie id", path, n))
        lines.append(n)
        row = fields[-n_genres:]
        if any(f not in ("0", "1") for f in row):
            bad = next(f for f in row if f not in ("0", "1"))
            raise DatasetError(f"genre flag {bad!r} is not 0 or 1", path=path, line=n)
        flags.append([f == "1" for f in row])
    _check_unique_ids(ids, lines, path, "movie id")
    pos = _lookup(item_ids, np.array(ids, dtype=np.int64), "movies", path, dataset)
    return np.array(flags, dtype=bool).reshape(len(ids), n_genres)[pos]


def _ml100k_users(path: Path, user_ids: np.ndarray, dataset: str) -> dict[str, np.ndarray]:
    ids: list[int] = []
    lines: list[int] = []
    ages: list[int] = []
    genders: list[str] = []
    occupations: list[str] = []
    for n, line in _text_lines(path, "latin-1"):
        fields = line.split("|")
        if len(fields) != 5:
            raise DatasetError(
                f"expected 5 fields 'id|age|gender|occupation|zip', found {len(fields)}",
                path=path,
                line=n,
            )
        ids.append(_parse_int(fields[0], "user id", path, n))
        ages.append(_parse_int(fields[1], "age", path, n))
        genders.append(fields[2])
        occupations.append(fields[3])
        lines.append(n)
    _check_unique_ids(ids, lines, path, "user id")
    pos = _lookup(user_ids, np.array(ids, dtype=np.int64), "users", path, dataset)
    return {
        "age": np.array(ages, dtype=np.int64)[pos],
        "gender": np.array(genders, dtype=str)[pos],
        "occupation": np.array(occupations, dtype=str)[pos],
    }


# ---------------------------------------------------------------- MovieLens 1M


def load_movielens_1m(
    folder: Path | str, *, verify: bool = True, duplicates: DuplicatePolicy = "error"
) -> Interactions:
    """MovieLens 1M from its original files in ``folder``.

    ``ratings.dat`` (``user::item::rating::timestamp``), ``movies.dat``
    (``id::title::Genre1|Genre2``, latin-1) and ``users.dat``
    (``user::gender::age::occupation::zip``). ``user_features``: ``age`` is the lower
    bound of the age bucket (1 means under 18), ``gender``, and ``occupation`` as the
    README's names. No checksum of these files is known; with ``verify`` the documented
    counts (1,000,209 ratings, 6,040 users, 3,706 rated movies) are checked instead.
    """
    dataset = "ml-1m"
    folder = Path(folder)
    require_files(dataset, folder, ML1M_FILES)
    path = folder / "ratings.dat"
    cols, source = read_table(
        path,
        sep="::",
        header=False,
        field_names=("user", "item", "rating", "timestamp"),
        columns={"user": "int", "item": "int", "rating": "float", "timestamp": "int"},
        encoding="latin-1",
    )
    rows = check_rows(
        dataset=dataset,
        users_raw=cols["user"],
        items_raw=cols["item"],
        ratings=cols["rating"],
        timestamps=cols["timestamp"],
        rating_scale=(1.0, 5.0),
        duplicates=duplicates,
        where=source,
    )
    if verify:
        counts = {
            "interactions": len(rows.users),
            "users": len(rows.user_ids),
            "items": len(rows.item_ids),
        }
        verify_counts(dataset, counts, path)
    genre_names, genres = _ml1m_item_genres(folder / "movies.dat", rows.item_ids, dataset)
    features = _ml1m_users(folder / "users.dat", rows.user_ids, dataset)
    return _interactions(
        dataset,
        rows,
        rating_scale=(1.0, 5.0),
        item_genres=genres,
        genre_names=genre_names,
        user_features=features,
    )


def _ml1m_item_genres(
    path: Path, item_ids: np.ndarray, dataset: str
) -> tuple[tuple[str, ...], np.ndarray]:
    names = list(ML1M_GENRES)
    index = {g: k for k, g in enumerate(names)}
    ids: list[int] = []
    lines: list[int] = []
    item_genres: list[list[int]] = []
    for n, line in _text_lines(path, "latin-1"):
        head, sep1, rest = line.partition("::")
        _title, sep2, genre_field = rest.rpartition("::")
        if not (sep1 and sep2):
            raise DatasetError(
                "expected 'id::title::Genre1|Genre2', found fewer than 3 fields", path=path, line=n
            )
        ids.append(_parse_int(head, "movie id", path, n))
        lines.append(n)
        row = []
        for g in genre_field.split("|") if genre_field else []:
            if g not in index:
                index[g] = len(names)
                names.append(g)
            row.append(index[g])
        item_genres.append(row)
    _check_unique_ids(ids, lines, path, "movie id")
    table = np.zeros((len(ids), len(names)), dtype=bool)
    for r, gs in enumerate(item_genres):
        table[r, gs] = True
    pos = _lookup(item_ids, np.array(ids, dtype=np.int64), "movies", path, dataset)
    return tuple(names), table[pos]


def _ml1m_users(path: Path, user_ids: np.ndarray, dataset: str) -> dict[str, np.ndarray]:
    ids: list[int] = []
    lines: list[int] = []
    ages: list[int] = []
    genders: list[str] = []
    occupations: list[str] = []
    for n, line in _text_lines(path, "latin-1"):
        fields = line.split("::")
        if len(fields) != 5:
            raise DatasetError(
                f"expected 5 fields 'user::gender::age::occupation::zip', found {len(fields)}",
                path=path,
                line=n,
            )
        ids.append(_parse_int(fields[0], "user id", path, n))
        genders.append(fields[1])
        ages.append(_parse_int(fields[2], "age", path, n))
        code = _parse_int(fields[3], "occupation", path, n)
        if not 0 <= code < len(ML1M_OCCUPATIONS):
            raise DatasetError(
                f"occupation code {code} is not in 0..{len(ML1M_OCCUPATIONS) - 1}",
                path=path,
                line=n,
            )
        occupations.append(ML1M_OCCUPATIONS[code])
        lines.append(n)
    _check_unique_ids(ids, lines, path, "user id")
    pos = _lookup(user_ids, np.array(ids, dtype=np.int64), "users", path, dataset)
    return {
        "age": np.array(ages, dtype=np.int64)[pos],
        "gender": np.array(genders, dtype=str)[pos],
        "occupation": np.array(occupations, dtype=str)[pos],
    }


# ---------------------------------------------------------------- MovieLens CSV


def load_movielens_csv(
    folder: Path | str,
    *,
    name: str = "ml-latest-small",
    verify: bool = True,
    duplicates: DuplicatePolicy = "error",
) -> Interactions:
    """A MovieLens release in the CSV format (``ml-latest-small``, ``ml-25m``, ...).

    ``ratings.csv`` needs the header columns ``userId,movieId,rating,timestamp``;
    ``movies.csv`` (``movieId,title,genres``) gives ``|``-separated genres, where
    ``(no genres listed)`` means none. Genre names are sorted alphabetically. Ratings are
    0.5..5 in half stars. With ``verify`` the files' SHA-256 are checked when known
    (``ml-latest-small``), else the documented counts (``ml-25m``: 25,000,095 ratings).
    """
    folder = Path(folder)
    require_files(name, folder, MLCSV_FILES)
    if verify:
        verify_checksums(name, folder, MLCSV_FILES)
    path = folder / "ratings.csv"
    cols, source = read_table(
        path,
        sep=",",
        header=True,
        columns={"userId": "int", "movieId": "int", "rating": "float", "timestamp": "int"},
    )
    rows = check_rows(
        dataset=name,
        users_raw=cols["userId"],
        items_raw=cols["movieId"],
        ratings=cols["rating"],
        timestamps=cols["timestamp"],
        rating_scale=(0.5, 5.0),
        duplicates=duplicates,
        where=source,
    )
    if verify:
        counts = {
            "interactions": len(rows.users),
            "users": len(rows.user_ids),
            "items": len(rows.item_ids),
        }
        verify_counts(name, counts, path)
    movies_path = folder / "movies.csv"
    movies, _ = read_table(
        movies_path,
        sep=",",
        header=True,
        columns={"movieId": "int", "genres": "str"},
    )
    movie_ids = movies["movieId"]
    dup = np.flatnonzero(np.unique(movie_ids, return_counts=True)[1] > 1)
    if len(dup):
        repeated = np.unique(movie_ids)[dup[0]]
        raise DatasetError(f"movie id {repeated} appears on more than one line", path=movies_path)
    pos = _lookup(rows.item_ids, movie_ids, "movies", movies_path, name)
    lists = [[] if g == NO_GENRES else g.split("|") for g in movies["genres"][pos].tolist()]
    genre_names = tuple(sorted({g for gs in lists for g in gs}))
    index = {g: k for k, g in enumerate(genre_names)}
    genres = np.zeros((len(lists), len(genre_names)), dtype=bool)
    for r, gs in enumerate(lists):
        genres[r, [index[g] for g in gs]] = True
    return _interactions(
        name, rows, rating_scale=(0.5, 5.0), item_genres=genres, genre_names=genre_names
    )


# ---------------------------------------------------------------- S3-Rec sequences


def load_s3rec(
    path: Path | str,
    *,
    name: str = "amazon-beauty",
    verify: bool = True,
    duplicates: DuplicatePolicy = "error",
) -> Interactions:
    """A sequence file in the S3-Rec format: one line per user, ``user item item ...``.

    Items are in time order; the result is implicit feedback (``ratings`` and
    ``timestamps`` are ``None``), and the file order is each user's time order. A user
    may have only one line and at least one item. ``path`` is the file, or a folder that
    holds ``Beauty.s3rec.txt``. With ``verify`` its SHA-256 is checked when known.
    """
    path = Path(path)
    if path.is_dir():
        require_files(name, path, (S3REC_FILE,))
        path = path / S3REC_FILE
    elif not path.is_file():
        require_files(name, path.parent, (path.name,))
    if verify:
        verify_checksums(name, path.parent, (path.name,))
    user_list: list[int] = []
    line_list: list[int] = []
    counts: list[int] = []
    item_chunks: list[list[int]] = []
    for n, line in _text_lines(path, "utf-8"):
        tokens = line.split()
        if not tokens:
            continue
        try:
            values = [int(t, 10) for t in tokens]
        except ValueError:
            bad = next(t for t in tokens if not _is_int(t))
            raise DatasetError(
                f"cannot parse {bad!r} as an integer id; expected 'user item item ...'",
                path=path,
                line=n,
            ) from None
        if len(values) < 2:
            raise DatasetError(
                f"user {values[0]} has no items; expected 'user item item ...'",
                path=path,
                line=n,
            )
        user_list.append(values[0])
        line_list.append(n)
        counts.append(len(values) - 1)
        item_chunks.append(values[1:])
    _check_unique_ids(user_list, line_list, path, "user")
    counts_arr = np.array(counts, dtype=np.int64)
    items_raw = (
        np.concatenate([np.array(c, dtype=np.int64) for c in item_chunks])
        if item_chunks
        else np.zeros(0, dtype=np.int64)
    )
    rows = check_rows(
        dataset=name,
        users_raw=np.repeat(np.array(user_list, dtype=np.int64), counts_arr),
        items_raw=items_raw,
        ratings=None,
        timestamps=None,
        rating_scale=None,
        duplicates=duplicates,
        where=LineNumbers(path, np.repeat(np.array(line_list, dtype=np.int64), counts_arr)),
    )
    return _interactions(name, rows, rating_scale=None)


def _is_int(token: str) -> bool:
    try:
        int(token, 10)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------- generic tables

_PARQUET_SUFFIXES = (".parquet", ".pq")
_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}


def load_table(
    path: Path | str,
    *,
    user_col: str,
    item_col: str,
    rating_col: str | None = None,
    timestamp_col: str | None = None,
    name: str | None = None,
    rating_scale: tuple[float, float] | None = None,
    sep: str | None = None,
    duplicates: DuplicatePolicy = "error",
) -> Interactions:
    """Interactions from a CSV/TSV file with a header, or a Parquet file.

    The column mapping names the user and item columns (ids may be integers or text)
    and optionally a rating column (numbers) and a timestamp column (integer Unix
    seconds; Parquet timestamp columns are converted). Without ``rating_col`` the data
    is implicit feedback. ``rating_scale`` bounds the ratings (checked); left out, it is
    the (min, max) present. ``sep`` defaults by suffix: ``.csv`` comma, ``.tsv``/``.tab``
    tab. ``name`` defaults to the file's stem.
    """
    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DatasetNotFoundError(f"{name}: file not found", path=path)
    wanted: dict[str, ColumnKind] = {user_col: "id", item_col: "id"}
    if rating_col is not None:
        wanted[rating_col] = "float"
    if timestamp_col is not None:
        wanted[timestamp_col] = "int"
    if len(wanted) != 2 + (rating_col is not None) + (timestamp_col is not None):
        raise DatasetError(f"{name}: the column mapping names one column twice", path=path)
    if path.suffix.lower() in _PARQUET_SUFFIXES:
        cols = _read_parquet(path, wanted, name)
        where: RowLocator = ArrayRows(path)
    else:
        if sep is None:
            sep = _SEPARATORS.get(path.suffix.lower())
            if sep is None:
                raise DatasetError(
                    f"{name}: cannot tell the separator from the suffix {path.suffix!r}; "
                    "pass sep=',' or sep='\\t', or use .csv/.tsv/.parquet",
                    path=path,
                )
        cols, where = read_table(path, sep=sep, header=True, columns=wanted)
    ratings = cols.get(rating_col) if rating_col is not None else None
    timestamps = cols.get(timestamp_col) if timestamp_col is not None else None
    rows = check_rows(
        dataset=name,
        users_raw=cols[user_col],
        items_raw=cols[item_col],
        ratings=ratings,
        timestamps=timestamps,
        rating_scale=rating_scale,
        duplicates=duplicates,
        where=where,
    )
    if rows.ratings is not None and rating_scale is None:
        rating_scale = (float(rows.ratings.min()), float(rows.ratings.max()))
    return _interactions(name, rows, rating_scale=rating_scale)


def _read_parquet(path: Path, wanted: dict[str, ColumnKind], name: str) -> dict[str, np.ndarray]:
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DatasetError(f"{name}: not a readable Parquet file: {exc}", path=path) from exc
    missing = [c for c in wanted if c not in schema.names]
    if missing:
        raise DatasetError(
            f"wrong columns: missing {', '.join(map(repr, missing))}; the file has "
            f"{', '.join(map(repr, schema.names))}",
            path=path,
        )
    table = pq.read_table(path, columns=list(wanted))
    where = ArrayRows(path)
    out: dict[str, np.ndarray] = {}
    for col_name, kind in wanted.items():
        col = table.column(col_name)
        if col.null_count:
            first = int(np.argmax(col.is_null().to_numpy(zero_copy_only=False)))
            raise row_error(where, first, f"column {col_name!r} is missing (null)")
        typ = col.type
        if kind == "id":
            if pa.types.is_integer(typ):
                out[col_name] = col.to_numpy().astype(np.int64)
            elif pa.types.is_string(typ) or pa.types.is_large_string(typ):
                out[col_name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=str)
            else:
                raise DatasetError(
                    f"column {col_name!r} has type {typ}; ids must be integers or text",
                    path=path,
                )
        elif kind == "float":
            if not (pa.types.is_integer(typ) or pa.types.is_floating(typ)):
                raise DatasetError(
                    f"column {col_name!r} has type {typ}; ratings must be numbers", path=path
                )
            out[col_name] = col.to_numpy().astype(np.float64)
        else:
            if pa.types.is_timestamp(typ):
                col = col.cast(pa.timestamp("s"), safe=False).cast(pa.int64())
            elif not pa.types.is_integer(typ):
                raise DatasetError(
                    f"column {col_name!r} has type {typ}; timestamps must be integer Unix "
                    "seconds or a Parquet timestamp",
                    path=path,
                )
            out[col_name] = col.to_numpy().astype(np.int64)
    return out
