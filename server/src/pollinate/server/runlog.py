"""The run directory's logs: per-round metrics, every message that crossed the wire, and
what the server did with each reply it did not use (``direction: "verdict"``)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import RecordDict

from pollinate.shared.wire import record_bytes


def row_density(value: np.ndarray) -> float | None:
    """Fraction of the rows of a 2-D array that hold any non-zero value (``None`` for
    anything that is not a numeric 2-D array with rows: a malformed payload may decode to
    something else).

    An item table's update whose rows are mostly zero shows which items the device
    trained on; noise (local DP) makes every row non-zero.
    """
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufc":
        return None
    if value.ndim != 2 or value.shape[0] == 0:
        return None
    if value.dtype.kind == "f" and value.shape[1] == 1:  # a bias column: NaN counts
        return float(np.count_nonzero(value) / value.shape[0])
    if value.dtype.kind == "f" and value.shape[1] > 0:
        # A row is non-zero iff its sum of absolute values is (NaN and inf included; a
        # sum of positive subnormals is never 0): one matrix product, several times
        # cheaper than ``any(axis=1)`` over a dense item table.
        with np.errstate(over="ignore", invalid="ignore"):  # inf or NaN: still non-zero
            sums = np.abs(value) @ np.ones(value.shape[1], dtype=value.dtype)
        return float(np.count_nonzero(sums) / value.shape[0])
    return float(np.count_nonzero(value.any(axis=1)) / value.shape[0])


def message_entry(
    round_: int, direction: str, node: int, kind: str, content: RecordDict
) -> dict[str, Any]:
    """Describe one message from its actual content (not from what was intended).

    For a training reply (``direction="up"``, ``kind="train"``) it also records, for each
    2-D array, the fraction of rows with any non-zero value (``row_density``), decoded
    from the payload: what an audit reads to see whether uploads reveal the items a
    device touched. An array that does not decode is left out of ``row_density`` (the
    server's own checks reject and log such a reply).
    """
    arrays: dict[str, list[int]] = {}
    density: dict[str, float] = {}
    for record in content.array_records.values():
        arrays.update({n: list(a.shape) for n, a in record.items()})
        if direction == "up" and kind == "train":
            for n, a in record.items():
                try:
                    share = row_density(a.numpy())
                except Exception:  # a malformed payload: the server rejects it elsewhere
                    continue
                if share is not None:
                    density[n] = share
    metrics: list[str] = []
    for mrec in content.metric_records.values():
        metrics.extend(sorted(mrec.keys()))
    entry: dict[str, Any] = {
        "round": round_,
        "direction": direction,
        "node": node,
        "kind": kind,
        "records": sorted(content.keys()),
        "arrays": arrays,
        "metrics": metrics,
        "bytes": record_bytes(content),
    }
    if direction == "up" and kind == "train":
        entry["row_density"] = density
    return entry


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

    def write_all(self, objs: Iterable[dict[str, Any]]) -> None:
        """Several lines, flushed once (a round's hundreds of message lines)."""
        self._fh.write("".join(json.dumps(obj, sort_keys=True) + "\n" for obj in objs))
        self._fh.flush()

    def write_per_node(self, entry: dict[str, Any], nodes: Iterable[int]) -> None:
        """``entry`` once for each node (with ``"node": n``), flushed once: the line of a
        message every sampled device got. Serialised once; each line is what
        :meth:`write` would write."""
        marker = -(2**62) - 12345  # no node id is negative
        template = json.dumps({**entry, "node": marker}, sort_keys=True)
        token = f'"node": {marker}'
        if template.count(token) != 1:
            self.write_all({**entry, "node": n} for n in nodes)
            return
        head, tail = template.split(token)
        self._fh.write("".join(f'{head}"node": {int(n)}{tail}\n' for n in nodes))
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
