"""Datasets for Pollinate: loading, validation, download, the synthetic generator.

Everything loads into :class:`Interactions`: rows in the order of the source file, user
and item ids remapped to contiguous integers in order of first appearance
(``user_ids``/``item_ids`` map them back), optional ratings, timestamps, multi-hot item
genres and user features.

Datasets
--------
:data:`DATASETS` lists every name with its source, licence and citation:
``synthetic`` (the default, generated in memory), ``ml-100k``, ``ml-1m``,
``ml-latest-small``, ``ml-25m``, ``amazon-beauty`` and ``csv`` (your own CSV, TSV or
Parquet file with a column mapping, see :func:`load_table`). Any other name that looks
like a path is your own file: ``load_dataset("ratings.csv", columns="user=uid,item=sku")``,
with the roles left out detected from the header (:mod:`~pollinate.shared.data.columns`).

How a dataset resolves
----------------------
``load_dataset(name, data_dir=None)`` looks for the folder ``<data dir>/<name>/``
(``ml-100k/``, ``ml-1m/``, ``ml-latest-small/``, ``ml-25m/``, ``amazon-beauty/``), where
the data directory is, in order:

1. the ``data_dir`` argument (the CLI's ``--data-dir``);
2. the environment variable ``POLLINATE_DATA_DIR``;
3. the cache, ``~/.cache/pollinate/data`` (or ``POLLINATE_CACHE_DIR``).

If the folder is not there (nor in the cache), MovieLens datasets are downloaded from
GroupLens into the cache through a swappable :class:`Transport`, extracted into a
temporary folder, verified, then moved into place. Amazon Beauty has no official
single-file URL; the error says where to get it and where to put it. Offline, the error
(:class:`~pollinate.shared.errors.DatasetNotFoundError`) names the folders searched and
how to fix it.

Verification: on every load (cheap; ``verify=False`` skips it), the SHA-256 of the
files of ``ml-100k``, ``ml-latest-small`` and ``amazon-beauty`` is checked against the
values embedded in :mod:`~pollinate.shared.data.checksums`; a mismatch raises
:class:`~pollinate.shared.errors.ChecksumError` naming the file. For ``ml-1m`` and
``ml-25m`` no checksum is known, so the documented counts (1,000,209 ratings, 6,040
users, 3,706 rated movies; 25,000,095 ratings, 162,541 users) are checked instead and
the log says so.

Errors name the file, the 1-based line and the problem: a missing file (and which
folder was searched, and ``--data-dir``/``POLLINATE_DATA_DIR`` as the fix), wrong
columns, an unparsable line, a NaN rating or one outside the dataset's rating scale,
duplicates, users or items without interactions (:func:`validate_interactions`).

Duplicate policy
----------------
Rows with the same **(user, item, timestamp)** are duplicates. Without timestamps,
explicit ratings of the same (user, item) pair are duplicates, while implicit rows are
events in time order, so a repeated pair is a repeat consumption and is kept. By default
(``duplicates="error"``) the first duplicate raises a ``DatasetError`` naming its line and
the line it repeats; ``duplicates="keep-first"`` keeps the first row in file order and
drops later copies.

Devices: one per user
---------------------
When a dataset is partitioned one device per user (:func:`partition_by_user`), device
``u`` holds all rows of user ``u`` and nothing else. Under the **rating** task its
train/valid/test rows are the user's rows in the fold's train/valid/test sets (file
order; parts may be empty). Under the **ranking** task (leave-last-out) its training rows
are its leave-last-out training rows in time order, plus exactly one validation item
(its second-to-last interaction) and one test item (its last).

The synthetic dataset
---------------------
:func:`generate_synthetic` plants user/item factors, power-law popularity and
activity, genres that follow the item factors, 1-5 star ratings, and timestamps with a
drifting short-term interest, deterministically from a seed; it returns the data and
its :class:`SyntheticTruth`. The default (``load_dataset("synthetic")``) has 1,000 users
and 500 items.

Importing this package is cheap: submodules (and pandas/pyarrow) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pollinate.shared.data.checksums import DOCUMENTED_COUNTS, KNOWN_SHA256, sha256_file
    from pollinate.shared.data.columns import (
        ColumnMapping,
        detect_columns,
        load_file,
        parse_columns,
        resolve_columns,
    )
    from pollinate.shared.data.download import Transport, urllib_transport
    from pollinate.shared.data.info import dataset_info
    from pollinate.shared.data.loaders import (
        load_movielens_1m,
        load_movielens_100k,
        load_movielens_csv,
        load_s3rec,
        load_table,
    )
    from pollinate.shared.data.partition import DevicePartition, UserRows, partition_by_user
    from pollinate.shared.data.registry import (
        CACHE_DIR_ENV,
        DATA_DIR_ENV,
        DATASETS,
        DatasetSpec,
        default_cache_dir,
        download_dataset,
        find_dataset,
        is_file_dataset,
        load_dataset,
        resolve_data_dir,
    )
    from pollinate.shared.data.splits import Split, leave_last_out, rating_fold, rating_split
    from pollinate.shared.data.synthetic import (
        SyntheticTruth,
        generate_synthetic,
        load_synthetic,
        synthetic_truth,
    )
    from pollinate.shared.data.types import Interactions, filter_min_interactions, remap_ids
    from pollinate.shared.data.validation import DuplicatePolicy, validate_interactions

_EXPORTS: dict[str, str] = {
    "DOCUMENTED_COUNTS": "checksums",
    "KNOWN_SHA256": "checksums",
    "sha256_file": "checksums",
    "ColumnMapping": "columns",
    "detect_columns": "columns",
    "load_file": "columns",
    "parse_columns": "columns",
    "resolve_columns": "columns",
    "Transport": "download",
    "urllib_transport": "download",
    "dataset_info": "info",
    "load_movielens_100k": "loaders",
    "load_movielens_1m": "loaders",
    "load_movielens_csv": "loaders",
    "load_s3rec": "loaders",
    "load_table": "loaders",
    "DevicePartition": "partition",
    "UserRows": "partition",
    "partition_by_user": "partition",
    "CACHE_DIR_ENV": "registry",
    "DATA_DIR_ENV": "registry",
    "DATASETS": "registry",
    "DatasetSpec": "registry",
    "default_cache_dir": "registry",
    "download_dataset": "registry",
    "find_dataset": "registry",
    "is_file_dataset": "registry",
    "load_dataset": "registry",
    "resolve_data_dir": "registry",
    "Split": "splits",
    "leave_last_out": "splits",
    "rating_fold": "splits",
    "rating_split": "splits",
    "SyntheticTruth": "synthetic",
    "generate_synthetic": "synthetic",
    "load_synthetic": "synthetic",
    "synthetic_truth": "synthetic",
    "Interactions": "types",
    "filter_min_interactions": "types",
    "remap_ids": "types",
    "DuplicatePolicy": "validation",
    "validate_interactions": "validation",
}

__all__ = [
    "CACHE_DIR_ENV",
    "DATASETS",
    "DATA_DIR_ENV",
    "DOCUMENTED_COUNTS",
    "KNOWN_SHA256",
    "ColumnMapping",
    "DatasetSpec",
    "DevicePartition",
    "DuplicatePolicy",
    "Interactions",
    "Split",
    "SyntheticTruth",
    "Transport",
    "UserRows",
    "dataset_info",
    "default_cache_dir",
    "detect_columns",
    "download_dataset",
    "filter_min_interactions",
    "find_dataset",
    "generate_synthetic",
    "is_file_dataset",
    "leave_last_out",
    "load_dataset",
    "load_file",
    "load_movielens_1m",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_s3rec",
    "load_synthetic",
    "load_table",
    "parse_columns",
    "partition_by_user",
    "rating_fold",
    "rating_split",
    "remap_ids",
    "resolve_columns",
    "resolve_data_dir",
    "sha256_file",
    "synthetic_truth",
    "urllib_transport",
    "validate_interactions",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
