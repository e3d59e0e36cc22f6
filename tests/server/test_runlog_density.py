"""The message log records, for each 2-D array of a training upload, the share of rows
that the upload changed (``row_density``), decoded from the payload; lines written a
round at a time are the lines written one by one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from flwr.app import MetricRecord, RecordDict

from pollinate.server.runlog import JsonlWriter, message_entry, row_density
from pollinate.shared.wire import METRICS_RECORD, UPDATE_RECORD, arrays_to_record


def test_row_density_counts_rows_with_any_non_zero() -> None:
    table = np.zeros((10, 3), dtype=np.float32)
    table[2, 1] = 0.5
    table[7] = -1.0
    assert row_density(table) == 0.2
    assert row_density(np.ones((4, 1))) == 1.0
    assert row_density(np.zeros(5)) is None  # not 2-D
    assert row_density(np.zeros((0, 3))) is None
    assert row_density(np.array([["a", "b"]])) is None  # not numeric
    assert row_density({"not": "an array"}) is None  # type: ignore[arg-type]


def test_row_density_of_float_tables_matches_any_on_hostile_values() -> None:
    """The float path (a matrix product) counts exactly the rows ``any`` counts: NaN,
    infinities, values whose squares or sums overflow, subnormals and -0.0 included."""
    rng = np.random.default_rng(0)
    tiny32 = np.finfo(np.float32).smallest_subnormal
    specials = [np.nan, np.inf, -np.inf, 3e38, -3e38, tiny32, -tiny32, -0.0, 0.0, 1.0]
    for dtype in (np.float32, np.float64, np.float16):
        for cols in (7, 1):  # a table, and a bias column
            table = np.zeros((200, cols), dtype=dtype)
            with np.errstate(over="ignore"):  # 3e38 is inf in float16
                for _ in range(150):
                    table[rng.integers(200), rng.integers(cols)] = rng.choice(specials)
            table[5] = -0.0
            table[6, :] = np.asarray(tiny32, dtype=dtype)  # float16: underflows to 0
            expected = np.count_nonzero(table.any(axis=1)) / 200
            assert 0 < expected < 1 and row_density(table) == expected, (dtype, cols)
    assert row_density(np.zeros((3, 0), dtype=np.float32)) == 0.0


def test_up_train_entry_carries_row_density_and_keeps_its_fields() -> None:
    table = np.zeros((4, 2), dtype=np.float32)
    table[0, 0] = 1.0
    content = RecordDict(
        {
            UPDATE_RECORD: arrays_to_record({"item": table, "bias": np.ones((1, 1), np.float32)}),
            METRICS_RECORD: MetricRecord({"num-examples": 3}),
        }
    )
    up = message_entry(2, "up", 7, "train", content)
    assert up["row_density"] == {"item": 0.25, "bias": 1.0}
    assert up["arrays"] == {"item": [4, 2], "bias": [1, 1]}
    assert {"round", "direction", "node", "kind", "records", "arrays", "metrics", "bytes"} <= set(
        up
    )
    assert up["metrics"] == ["num-examples"] and up["round"] == 2 and up["node"] == 7
    down = message_entry(2, "down", 7, "train", content)
    assert "row_density" not in down
    assert "row_density" not in message_entry(2, "up", 7, "evaluate", content)


def test_lines_written_at_once_are_the_lines_written_one_by_one(tmp_path: Path) -> None:
    """A round's message lines go out in one write; each is what ``write`` writes."""
    entry = {"round": 3, "direction": "down", "kind": "train", "bytes": 12,
             "arrays": {"item": [4, 2]}, "metrics": ["node"], "node": 0}  # fmt: skip
    nodes = [0, 7, 2**62, 5]
    one, many = JsonlWriter(tmp_path / "one.jsonl"), JsonlWriter(tmp_path / "many.jsonl")
    for n in nodes:
        one.write({**entry, "node": n})
    many.write_per_node(entry, nodes)
    many.write_all([{**entry, "node": n} for n in nodes])
    one.close(), many.close()
    lines = (tmp_path / "one.jsonl").read_text()
    assert (tmp_path / "many.jsonl").read_text() == lines + lines
    assert [json.loads(x)["node"] for x in lines.splitlines()] == nodes
    # A marker that collides with the content falls back to one dump per line.
    odd = JsonlWriter(tmp_path / "odd.jsonl")
    odd.write_per_node({**entry, "kind": '"node": -4611686018427400249'}, [1, 2])
    odd.close()
    assert [json.loads(x)["node"] for x in (tmp_path / "odd.jsonl").read_text().splitlines()] == [
        1,
        2,
    ]
