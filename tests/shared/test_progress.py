"""pollinate.shared.progress: the set-up steps of long commands say what they do."""

from __future__ import annotations

import io

from pollinate.shared.progress import step


def test_a_step_prints_its_start_and_duration() -> None:
    out = io.StringIO()
    with step("loading ml-100k", stream=out):
        pass
    first, second = out.getvalue().splitlines()
    assert first == "loading ml-100k…"
    assert second.startswith("  loading ml-100k: done (") and second.endswith(" s)")


def test_a_step_is_silent_when_progress_is_off() -> None:
    out = io.StringIO()
    with step("calibrating noise", enabled=False, stream=out):
        pass
    assert out.getvalue() == ""
