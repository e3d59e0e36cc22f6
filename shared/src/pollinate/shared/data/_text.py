"""Strict, fast reading of delimited text tables, with exact line numbers on errors.

The fast path is :mod:`pyarrow.csv`, which is strict about the number of fields on every
line and about the type of every value, but does not say on which line a problem is.
When it fails (or leaves a missing value), :func:`locate_problem` re-reads the file line
by line in Python with the same rules and raises a :class:`DatasetError` that names the
file, the 1-based line number and the problem. The slow path runs only on bad files.

Rules shared by both paths: a line that is exactly empty is skipped; every other line
must have exactly the expected number of fields; integers are base-10 digits with an
optional sign; a number field may not be empty, ``NaN`` or one of pyarrow's null
markers. Only comma-separated files know quoting (``"a, b"``); other separators split
plainly. A separator longer than one character (``::`` in MovieLens 1M) is supported.
"""

from __future__ import annotations

import csv
import io
import math
import mmap
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from pollinate.shared.errors import DatasetError

ColumnKind = Literal["int", "float", "str", "id"]
"""``int``: int64; ``float``: float64; ``str``: text; ``id``: int64 when every value is a
canonical integer, else text (identifiers may be either)."""

_ARROW_TYPES: dict[str, pa.DataType] = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "id": pa.string(),
}
_CANONICAL_INT = r"^-?(0|[1-9][0-9]*)$"
_KIND_WORDS = {"int": "an integer", "float": "a number", "str": "text", "id": "an id"}


@dataclass(frozen=True)
class TextSource:
    """Where the rows of a parsed text table came from; maps rows back to lines."""

    path: Path
    sep: str
    header: bool
    encoding: str

    def line_of(self, row: int) -> int:
        """1-based line number of data row ``row`` (0-based, blank lines not counted)."""
        return int(self.lines_of(np.array([row]))[0])

    def lines_of(self, rows: np.ndarray) -> np.ndarray:
        """1-based line numbers of several data rows."""
        rows = np.asarray(rows, dtype=np.int64)
        first_data_line = 2 if self.header else 1
        if not _has_blank_lines(self.path):
            return rows + first_data_line
        wanted = {int(r) for r in rows}
        found: dict[int, int] = {}
        for row, (line_no, _) in enumerate(_iter_rows(self)):
            if row in wanted:
                found[row] = line_no
                if len(found) == len(wanted):
                    break
        return np.array([found.get(int(r), -1) for r in rows], dtype=np.int64)


def read_header(path: Path, sep: str, encoding: str = "utf-8") -> list[str]:
    """The field names on the first line of ``path``."""
    with path.open("rb") as fh:
        raw = fh.readline()
    try:
        text = raw.decode(encoding).lstrip("\ufeff").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"header is not valid {encoding}: {exc}", path=path, line=1) from exc
    if not text:
        raise DatasetError("the file is empty or its first line is blank", path=path, line=1)
    return _split(text, sep)


def read_table(
    path: Path,
    *,
    sep: str,
    columns: Mapping[str, ColumnKind],
    header: bool,
    field_names: Sequence[str] | None = None,
    encoding: str = "utf-8",
) -> tuple[dict[str, np.ndarray], TextSource]:
    """Read ``columns`` of a delimited text file into numpy arrays, strictly.

    With ``header=True`` the first line names the fields and must contain every key of
    ``columns``. With ``header=False``, ``field_names`` names every field of a line, in
    order, and each line must have exactly that many fields.
    """
    source = TextSource(path=path, sep=sep, header=header, encoding=encoding)
    if header:
        names = read_header(path, sep, encoding)
        missing = [c for c in columns if c not in names]
        if missing:
            raise DatasetError(
                f"wrong columns: missing {', '.join(repr(c) for c in missing)}; the header has "
                f"{', '.join(repr(n) for n in names)}",
                path=path,
                line=1,
            )
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise DatasetError(f"wrong columns: {dup!r} appears twice", path=path, line=1)
    else:
        if field_names is None:
            raise ValueError("field_names is required when header=False")
        names = list(field_names)
    kinds = {name: columns.get(name) for name in names}

    read_options = pacsv.ReadOptions(
        column_names=None if header else names, encoding=encoding, block_size=1 << 24
    )
    parse_options = pacsv.ParseOptions(
        delimiter="\t" if len(sep) > 1 else sep,
        quote_char='"' if sep == "," else False,
        newlines_in_values=False,
        ignore_empty_lines=True,
    )
    convert_options = pacsv.ConvertOptions(
        column_types={c: _ARROW_TYPES[k] for c, k in columns.items()},
        include_columns=list(columns),
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    input_file: Path | io.BytesIO = path
    if len(sep) > 1:
        input_file = io.BytesIO(path.read_bytes().replace(sep.encode(encoding), b"\t"))
    try:
        table = pacsv.read_csv(
            input_file if isinstance(input_file, io.BytesIO) else str(input_file),
            read_options=read_options,
            parse_options=parse_options,
            convert_options=convert_options,
        )
    except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
        locate_problem(source, kinds)
        raise DatasetError(f"cannot parse the file: {exc}", path=path) from exc
    except FileNotFoundError as exc:
        raise DatasetError("file not found", path=path) from exc

    out: dict[str, np.ndarray] = {}
    for name, kind in columns.items():
        col = table.column(name)
        if col.null_count:
            locate_problem(source, kinds)
            raise DatasetError(f"column {name!r} has {col.null_count} missing values", path=path)
        if kind in ("int", "float"):
            out[name] = col.to_numpy()
            continue
        if len(col) and pc.any(pc.equal(col, "")).as_py():
            locate_problem(source, kinds)
            raise DatasetError(f"column {name!r} has empty values", path=path)
        if kind == "id" and pc.all(pc.match_substring_regex(col, _CANONICAL_INT)).as_py() in (
            True,
            None,  # an empty column
        ):
            try:
                out[name] = col.cast(pa.int64()).to_numpy()
                continue
            except pa.ArrowInvalid:  # does not fit into int64: keep the text
                pass
        out[name] = np.asarray(col.to_numpy(zero_copy_only=False), dtype=object).astype(str)
    return out, source


def locate_problem(source: TextSource, kinds: Mapping[str, ColumnKind | None]) -> None:
    """Re-read ``source`` line by line and raise a :class:`DatasetError` at the first bad
    line. Returns only if no line breaks the rules (the caller then reports generically).

    ``kinds`` maps every field name, in order, to the kind it must parse as (``None``
    for fields that are not read).
    """
    names = list(kinds)
    for line_no, fields in _iter_rows(source):
        if len(fields) != len(names):
            raise DatasetError(
                f"expected {len(names)} fields separated by {source.sep!r} "
                f"({', '.join(names)}), found {len(fields)}",
                path=source.path,
                line=line_no,
            )
        for name, field in zip(names, fields, strict=True):
            kind = kinds[name]
            if kind is None:
                continue
            problem = _field_problem(field, kind)
            if problem:
                raise DatasetError(f"column {name!r}: {problem}", path=source.path, line=line_no)


def _field_problem(field: str, kind: ColumnKind) -> str | None:
    text = field.strip()
    if not text:
        return f"empty value where {_KIND_WORDS[kind]} is expected"
    if kind == "int":
        try:
            int(text, 10)
        except ValueError:
            return f"cannot parse {field!r} as an integer"
    elif kind == "float":
        try:
            value = float(text)
        except ValueError:
            return f"cannot parse {field!r} as a number"
        if math.isnan(value):
            return f"value {field!r} is NaN (not a number)"
    return None


def _split(text: str, sep: str) -> list[str]:
    if sep == ",":
        return next(csv.reader([text]), [])
    return text.split(sep)


def _iter_rows(source: TextSource) -> Iterator[tuple[int, list[str]]]:
    """``(line_no, fields)`` of every data row, skipping the header and empty lines."""
    with source.path.open("rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            try:
                text = raw.decode(source.encoding)
            except UnicodeDecodeError as exc:
                raise DatasetError(
                    f"not valid {source.encoding} text: {exc}", path=source.path, line=line_no
                ) from exc
            if line_no == 1:
                text = text.lstrip("\ufeff")
                if source.header:
                    continue
            text = text.rstrip("\r\n")
            if not text:
                continue
            yield line_no, _split(text, source.sep)


def _has_blank_lines(path: Path) -> bool:
    """Whether any line of ``path`` (before its end) is empty."""
    with path.open("rb") as fh:
        if path.stat().st_size == 0:
            return False
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            if mm[:1] == b"\n" or mm[:2] == b"\r\n":
                return True
            return mm.find(b"\n\n") >= 0 or mm.find(b"\n\r\n") >= 0
