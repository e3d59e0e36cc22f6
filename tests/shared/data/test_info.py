"""dataset_info: the facts the CLI prints."""

from __future__ import annotations

import json
from pathlib import Path

from pollinate.shared.data import dataset_info, load_movielens_100k, load_s3rec


def test_info_of_an_explicit_dataset(fixtures: Path) -> None:
    info = dataset_info(load_movielens_100k(fixtures / "ml-100k", verify=False))
    assert info == {
        "name": "ml-100k",
        "users": 3,
        "items": 3,
        "interactions": 5,
        "density": 5 / 9,
        "implicit": False,
        "rating_scale": [1.0, 5.0],
        "rating_range": [1.0, 5.0],
        "time_span": ["1997-12-04", "1997-12-04"],
        "genres": 3,
        "user_features": ["age", "gender", "occupation"],
        "interactions_per_user": {"min": 1, "mean": 5 / 3, "max": 2},
    }
    json.dumps(info)  # plain Python values only


def test_info_of_an_implicit_sequence_file(fixtures: Path) -> None:
    info = dataset_info(load_s3rec(fixtures / "amazon-beauty", verify=False))
    assert info["rating_range"] == "implicit (no ratings)"
    assert info["rating_scale"] is None
    assert info["time_span"] == "file order (no timestamps)"
    assert info["genres"] == 0
    assert (info["users"], info["items"], info["interactions"]) == (3, 5, 8)
