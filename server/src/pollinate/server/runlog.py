"""The run directory's logs: per-round metrics, every message that crossed the wire, and
what the server did with each reply it did not use (``direction: "verdict"``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flwr.app import RecordDict

from pollinate.shared.wire import record_bytes


def message_entry(
    round_: int, direction: str, node: int, kind: str, content: RecordDict
) -> dict[str, Any]:
    """Describe one message from its actual content (not from what was intended)."""
    arrays: dict[str, list[int]] = {}
    for record in content.array_records.values():
        arrays.update({n: list(a.shape) for n, a in record.items()})
    metrics: list[str] = []
    for mrec in content.metric_records.values():
        metrics.extend(sorted(mrec.keys()))
    return {
        "round": round_,
        "direction": direction,
        "node": node,
        "kind": kind,
        "records": sorted(content.keys()),
        "arrays": arrays,
        "metrics": metrics,
        "bytes": record_bytes(content),
    }


class JsonlWriter:
    """Append-only JSON-lines file, flushed after each line."""

    def __init__(self, path: Path, *, keep_through_round: int | None = None) -> None:
        """Start ``path`` afresh, or (resuming) keep its lines of rounds <= the given one."""
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        kept: list[str] = []
        if keep_through_round is not None and path.exists():
            kept = [
                line
                for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("round", 0) <= keep_through_round
            ]
        path.write_text("".join(line + "\n" for line in kept))
        self._fh = path.open("a")

    def write(self, obj: dict[str, Any]) -> None:
        self._fh.write(json.dumps(obj, sort_keys=True) + "\n")
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def verdict_entry(
    round_: int, node: int, kind: str, verdict: str, reason: str, detail: str | None = None
) -> dict[str, Any]:
    """What the server did with a reply it did not use: ``"rejected"`` (malformed, with
    the reason category and what exactly was wrong) or ``"refused"`` (the device declined,
    with its refusal reason)."""
    entry: dict[str, Any] = {
        "round": round_,
        "direction": "verdict",
        "node": node,
        "kind": kind,
        "verdict": verdict,
        "reason": reason,
    }
    if detail is not None:
        entry["detail"] = detail
    return entry
