"""The deployment's reply polling and SuperLink environment (no network)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pollinate.server.deploy.catalogue import REPLY_POLL_S, _polls_slowly, poll_replies


def _messages(n: int) -> list[Any]:
    return [object() for _ in range(n)]


class _Reply:
    def __init__(self, to: str) -> None:
        self.metadata = type("M", (), {"reply_to_message_id": to})()


class _SlowGrid:
    """Replies arrive one per pull: what a Grid's pull_messages returns over a round."""

    def __init__(self, n: int, lost: int = 0) -> None:
        self.ids = [f"m{i}" for i in range(n)]
        self.lost = set(self.ids[:lost])
        self.pulls = 0

    def push_messages(self, messages: Any) -> list[str]:
        assert len(list(messages)) == len(self.ids)
        return list(self.ids)

    def pull_messages(self, ids: Any) -> list[_Reply]:
        self.pulls += 1
        ready = sorted(set(ids) - self.lost)
        return [_Reply(ready[0])] if ready else []


def test_replies_are_collected_at_the_short_interval_until_all_are_in() -> None:
    grid = _SlowGrid(4)
    start = time.monotonic()
    replies = poll_replies(grid, _messages(4), timeout=None, interval=0.01)
    assert sorted(r.metadata.reply_to_message_id for r in replies) == grid.ids
    assert grid.pulls == 4 and time.monotonic() - start < 1.0


def test_a_missing_reply_ends_at_the_timeout_with_what_came() -> None:
    grid = _SlowGrid(3, lost=1)
    start = time.monotonic()
    replies = poll_replies(grid, _messages(3), timeout=0.3, interval=0.01)
    assert len(replies) == 2
    assert 0.3 <= time.monotonic() - start < 2.0


def test_only_flowers_http_grid_gets_the_fast_polling() -> None:
    from flwr.superlink.grid.http_grid import HttpGrid

    assert REPLY_POLL_S < 3
    assert not _polls_slowly(_SlowGrid(1))
    assert _polls_slowly(HttpGrid.__new__(HttpGrid))


def test_the_superlink_env_shortens_superexec_polling(tmp_path: Path) -> None:
    from pollinate.server.deploy.superlink import SUPEREXEC_POLL_ENV, ServerState

    env = ServerState(tmp_path).env()
    assert float(env[SUPEREXEC_POLL_ENV]) < 1.0
    assert env["FLWR_TELEMETRY_ENABLED"] == "0"
