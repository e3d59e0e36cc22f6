"""Your own data: a CSV, TSV or Parquet file and the mapping of its columns.

A dataset that is not one of the registry's names is a file path. Its columns map onto
four roles: ``user`` and ``item`` (required; integer or text ids), ``rating`` (optional;
numbers, else the data is implicit feedback) and ``timestamp`` (optional; integer Unix
seconds, or a Parquet timestamp). The mapping is written as on the command line,
``user=customer,item=sku,rating=stars,timestamp=ts``, or given as a mapping. Roles left
out are detected from the header by common names (:data:`ROLE_NAMES`, compared without
case, ``_``, ``-`` or spaces); a role whose column is named empty or ``none``
(``timestamp=``) is left out on purpose. Two columns that both look like one role are
an error that names them and the ``--columns`` entry that settles it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pollinate.shared.errors import ConfigError, DatasetError, DatasetNotFoundError

ROLES = ("user", "item", "rating", "timestamp")
REQUIRED_ROLES = ("user", "item")

#: Header names recognised for each role, normalised (lower case, no ``_``/``-``/space).
ROLE_NAMES: Mapping[str, tuple[str, ...]] = {
    "user": ("user", "userid", "uid", "users", "customer", "customerid", "reviewerid",
             "visitorid", "member", "memberid", "clientid", "account", "accountid"),
    "item": ("item", "itemid", "iid", "items", "movie", "movieid", "product", "productid",
             "asin", "sku", "article", "articleid", "track", "trackid", "book", "bookid",
             "isbn", "song", "songid", "video", "videoid"),
    "rating": ("rating", "ratings", "score", "stars", "star", "overall", "grade",
               "bookrating", "userrating"),
    "timestamp": ("timestamp", "ts", "time", "unixtime", "unixtimestamp",
                  "unixreviewtime", "eventtime", "epoch", "datetime"),
}  # fmt: skip

PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SEPARATORS = {".csv": ",", ".tsv": "\t", ".tab": "\t"}
TABLE_SUFFIXES = (*TEXT_SEPARATORS, *PARQUET_SUFFIXES)
_NONE = ("", "none", "-")

if TYPE_CHECKING:  # the readers (pyarrow) load on first use: the config imports this module
    from pollinate.shared.data.types import Interactions
    from pollinate.shared.data.validation import DuplicatePolicy


@dataclass(frozen=True)
class ColumnMapping:
    """Which column of a file plays each role (``rating``/``timestamp`` may be absent)."""

    user: str
    item: str
    rating: str | None = None
    timestamp: str | None = None

    def to_text(self) -> str:
        """The mapping as ``--columns`` takes it (absent roles left out)."""
        return ",".join(f"{r}={getattr(self, r)}" for r in ROLES if getattr(self, r) is not None)


def looks_like_path(name: str) -> bool:
    """Whether a dataset name is a file path (a table suffix or a ``/``) rather than a
    registry name (which has neither)."""
    return Path(name).suffix.lower() in TABLE_SUFFIXES or os.sep in name or "/" in name


def parse_columns(spec: str | Mapping[str, str | None] | None) -> dict[str, str | None]:
    """The roles a ``--columns`` value names: ``{"user": "uid", "timestamp": None, ...}``.

    ``None`` for a role means "this file has no such column"; a role that is not in the
    result is left to detection.
    """
    if spec is None:
        return {}
    if isinstance(spec, str):
        pairs: list[tuple[str, str]] = []
        for part in (p.strip() for p in spec.split(",")):
            if not part:
                continue
            if "=" not in part:
                raise ConfigError(
                    f"--columns entry {part!r} is not ROLE=COLUMN; write for example "
                    "--columns user=customer_id,item=sku,rating=stars,timestamp=ts"
                )
            role, column = part.split("=", 1)
            pairs.append((role.strip(), column.strip()))
    else:
        pairs = [(str(r), "" if c is None else str(c)) for r, c in spec.items()]
    out: dict[str, str | None] = {}
    for role, column in pairs:
        if role not in ROLES:
            raise ConfigError(
                f"--columns names an unknown role {role!r}; the roles are {', '.join(ROLES)}"
            )
        if role in out:
            raise ConfigError(f"--columns names the role {role!r} twice")
        out[role] = None if column.lower() in _NONE else column
    for role in REQUIRED_ROLES:
        if role in out and out[role] is None:
            raise ConfigError(f"--columns: the {role!r} column is required and cannot be none")
    return out


def _normal(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch not in "_- ")


def detect_columns(
    header: list[str], given: Mapping[str, str | None], *, path: Path | None = None
) -> ColumnMapping:
    """Complete the ``given`` roles from the ``header`` by common names.

    Raises :class:`DatasetError` when a named column is not in the header, when a
    required role has no candidate, or when a role has more than one candidate.
    """
    for role, column in given.items():
        if column is not None and column not in header:
            raise DatasetError(
                f"--columns {role}={column}: the file has no column {column!r}; its header "
                f"has {', '.join(map(repr, header))}",
                path=path,
                line=1,
            )
    taken = {c for c in given.values() if c is not None}
    chosen: dict[str, str | None] = dict(given)
    for role in ROLES:
        if role in chosen:
            continue
        candidates = [c for c in header if c not in taken and _normal(c) in ROLE_NAMES[role]]
        if len(candidates) > 1:
            raise DatasetError(
                f"the {role} column is ambiguous: {', '.join(map(repr, candidates))} all look "
                f"like one; say which with --columns {role}={candidates[0]}",
                path=path,
                line=1,
            )
        if not candidates:
            if role in REQUIRED_ROLES:
                raise DatasetError(
                    f"no {role} column found (looked for names like "
                    f"{', '.join(ROLE_NAMES[role][:4])}); the header has "
                    f"{', '.join(map(repr, header))}. Name it with --columns "
                    f"{role}=COLUMN (for example --columns user=...,item=...)",
                    path=path,
                    line=1,
                )
            chosen[role] = None
        else:
            chosen[role] = candidates[0]
            taken.add(candidates[0])
    user, item = chosen["user"], chosen["item"]
    assert user is not None and item is not None
    return ColumnMapping(user, item, chosen["rating"], chosen["timestamp"])


def file_header(path: Path) -> list[str]:
    """The column names of a CSV/TSV (its first line) or Parquet file (its schema)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pollinate.shared.data._text import read_header

    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DatasetError(f"not a readable Parquet file: {exc}", path=path) from exc
    sep = TEXT_SEPARATORS.get(suffix)
    if sep is None:
        raise DatasetError(
            f"cannot tell the format from the suffix {path.suffix!r}; name the file "
            ".csv (comma), .tsv (tab) or .parquet",
            path=path,
        )
    return read_header(path, sep)


def resolve_columns(
    path: str | os.PathLike[str], columns: str | Mapping[str, str | None] | None = None
) -> ColumnMapping:
    """The column mapping of the file at ``path``: ``columns``, completed by detection."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetNotFoundError(
            "file not found; --dataset takes a registry name (synthetic, ml-100k, ...) or "
            "the path of a CSV, TSV or Parquet file",
            path=path,
        )
    return detect_columns(file_header(path), parse_columns(columns), path=path)


def load_file(
    path: str | os.PathLike[str],
    columns: str | Mapping[str, str | None] | None = None,
    *,
    duplicates: DuplicatePolicy = "error",
    rating_scale: tuple[float, float] | None = None,
) -> Interactions:
    """Load your own CSV/TSV/Parquet file with the column mapping ``columns`` (see module)."""
    from pollinate.shared.data.loaders import load_table

    path = Path(path).expanduser()
    mapping = resolve_columns(path, columns)
    return load_table(
        path,
        user_col=mapping.user,
        item_col=mapping.item,
        rating_col=mapping.rating,
        timestamp_col=mapping.timestamp,
        rating_scale=rating_scale,
        duplicates=duplicates,
    )
