"""History building on hand-made data: right items, right order, right gaps, no future."""

from __future__ import annotations

import numpy as np
import torch

from pollinate.shared.data.types import Interactions
from pollinate.shared.training import build_examples, gap_buckets, take

PAD = 10  # n_items


def _data(timestamps: bool = True) -> Interactions:
    # File order is NOT time order for user 0; user 1 is interleaved.
    users = np.array([0, 0, 1, 0, 0, 1, 0])
    items = np.array([3, 1, 7, 4, 2, 8, 5])
    ts = np.array([30, 10, 5, 20, 40, 6, 40])  # user 0 in time: 1@10, 4@20, 3@30, 2@40, 5@40
    return Interactions(
        name="toy",
        users=users,
        items=items,
        ratings=np.arange(1, 8, dtype=np.float32),
        timestamps=ts if timestamps else None,
        user_ids=np.arange(2),
        item_ids=np.arange(PAD),
    )


def test_history_is_earlier_rows_in_time_order_padded_left() -> None:
    data = _data()
    rows = np.arange(7)
    ex = build_examples(data, rows, history_len=3)
    hist = ex["hist"].numpy()
    # row 0: item 3 at t=30 -> earlier: 1@10, 4@20
    assert hist[0].tolist() == [PAD, 1, 4]
    # row 1: item 1 at t=10 is user 0's first -> empty
    assert hist[1].tolist() == [PAD, PAD, PAD]
    # row 4: item 2 at t=40 (file row 4) -> last three earlier: 4, 3 ... tie with row 6
    assert hist[4].tolist() == [1, 4, 3]
    # row 6: item 5 at t=40, after row 4 in file order (ties keep file order)
    assert hist[6].tolist() == [4, 3, 2]
    # user 1 never sees user 0's items
    assert hist[2].tolist() == [PAD, PAD, PAD]
    assert hist[5].tolist() == [PAD, PAD, 7]
    assert ex["user"].tolist() == data.users.tolist()
    assert ex["item"].tolist() == data.items.tolist()
    assert torch.equal(ex["rating"], torch.arange(1, 8, dtype=torch.float32))


def test_no_future_leakage_whatever_the_row_order() -> None:
    data = _data()
    rng = np.random.default_rng(0)
    rows = rng.permutation(7)
    ex = build_examples(data, rows, history_len=5)
    order = data.time_order()
    position = np.empty(7, dtype=int)
    position[order] = np.arange(7)
    for k, r in enumerate(rows):
        u = data.users[r]
        earlier = [data.items[q] for q in order if data.users[q] == u and position[q] < position[r]]
        got = [i for i in ex["hist"][k].tolist() if i != PAD]
        assert got == earlier[-5:]


def test_gaps_are_bucketed_seconds_and_zero_on_padding() -> None:
    ex = build_examples(_data(), np.arange(7), history_len=3)
    # row 0: target t=30; history 1@10, 4@20 -> gaps 20 s, 10 s
    assert ex["hist_gap"][0].tolist() == [0, *gap_buckets(np.array([20, 10])).tolist()]
    assert gap_buckets(np.array([0, 1, 3, 10**12])).tolist() == [1, 2, 3, 31]


def test_context_rows_form_the_pool_for_held_out_rows() -> None:
    data = _data()
    # Hold out row 4 (2@40) and row 0 (3@30); they must not see each other.
    train = np.array([1, 2, 3, 5, 6])
    ex = build_examples(data, np.array([4, 0]), context_rows=train, history_len=4)
    assert ex["hist"][0].tolist() == [PAD, PAD, 1, 4]  # not 3 (held out), not 5 (later)
    assert ex["hist"][1].tolist() == [PAD, PAD, 1, 4]


def test_without_timestamps_file_order_and_step_gaps() -> None:
    data = _data(timestamps=False)
    ex = build_examples(data, np.arange(7), history_len=3)
    # user 0 in file order: 3, 1, 4, 2, 5
    assert ex["hist"][6].tolist() == [1, 4, 2]
    assert ex["hist_gap"][6].tolist() == gap_buckets(np.array([3, 2, 1])).tolist()


def test_zero_history_and_take() -> None:
    ex = build_examples(_data(), np.array([0, 1]), history_len=0)
    assert ex["hist"].shape == (2, 0)
    sub = take(ex, np.array([1]))
    assert sub["item"].tolist() == [1]


def test_implicit_data_has_no_rating() -> None:
    data = _data()
    implicit = Interactions("toy", data.users, data.items, None, None, data.user_ids, data.item_ids)
    assert "rating" not in build_examples(implicit, np.arange(7), history_len=2)
