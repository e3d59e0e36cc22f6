"""The registry, data-directory resolution and the public surface of the package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import pollinate.shared.data as data_pkg
from pollinate.shared.data import DATASETS, load_dataset, resolve_data_dir
from pollinate.shared.errors import ConfigError


def _fail(url: str, dest: Path) -> None:
    raise AssertionError(f"tried to download {url}")


def test_registry_lists_sources_licences_and_citations() -> None:
    assert set(DATASETS) == {
        "synthetic",
        "ml-100k",
        "ml-1m",
        "ml-latest-small",
        "ml-25m",
        "amazon-beauty",
        "csv",
    }
    for name in ("ml-100k", "ml-1m", "ml-latest-small", "ml-25m"):
        spec = DATASETS[name]
        assert spec.url == f"https://files.grouplens.org/datasets/movielens/{name}.zip"
        assert "Harper" in spec.citation and "research" in spec.licence
    beauty = DATASETS["amazon-beauty"]
    assert beauty.url is None and beauty.implicit and beauty.manual_download
    assert beauty.checksums["Beauty.s3rec.txt"].startswith("226cce9c")
    assert DATASETS["ml-1m"].documented_counts["interactions"] == 1_000_209
    assert DATASETS["ml-25m"].documented_counts["interactions"] == 25_000_095


def test_resolution_order(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert resolve_data_dir() == tmp_path / "cache"
    monkeypatch.setenv("POLLINATE_DATA_DIR", str(tmp_path / "env"))
    assert resolve_data_dir() == tmp_path / "env"
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv("POLLINATE_CACHE_DIR")
    monkeypatch.delenv("POLLINATE_DATA_DIR")
    assert resolve_data_dir() == Path("~/.cache/pollinate/data").expanduser()


def test_load_from_env_then_argument_then_cache(
    monkeypatch: pytest.MonkeyPatch, copy_fixture, tmp_path: Path
) -> None:
    env_copy = copy_fixture("ml-1m", "env")
    arg_copy = copy_fixture("ml-1m", "arg")
    (arg_copy / "ratings.dat").write_text("7::1193::2::978300760\n")
    copy_fixture("ml-1m", "cache")
    monkeypatch.setenv("POLLINATE_DATA_DIR", str(env_copy.parent))
    from_env = load_dataset("ml-1m", verify=False, transport=_fail)
    np.testing.assert_array_equal(from_env.user_ids, [5, 7])
    from_arg = load_dataset("ml-1m", tmp_path / "arg", verify=False, transport=_fail)
    np.testing.assert_array_equal(from_arg.user_ids, [7])
    # a data dir without the dataset falls back to the cache before downloading
    from_cache = load_dataset("ml-1m", tmp_path / "nothing", verify=False, transport=_fail)
    np.testing.assert_array_equal(from_cache.user_ids, [5, 7])


def test_csv_and_synthetic_through_load_dataset(fixtures: Path) -> None:
    d = load_dataset("csv", path=fixtures / "table.csv", user_col="user", item_col="item")
    assert d.implicit and d.n_interactions == 3
    with pytest.raises(ConfigError, match="needs path="):
        load_dataset("csv")
    s = load_dataset("synthetic", n_users=50, n_items=40, seed=3)
    assert s.n_users == 50 and s.name == "synthetic"


def test_folder_datasets_take_no_options(copy_fixture) -> None:
    with pytest.raises(ConfigError, match="takes no options, got n_users"):
        load_dataset("ml-1m", n_users=3)


def test_public_api_is_pinned() -> None:
    assert data_pkg.__all__ == [
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
    for name in data_pkg.__all__:
        assert getattr(data_pkg, name) is not None
    with pytest.raises(AttributeError):
        data_pkg.not_a_name  # noqa: B018
