"""What a fast run keeps of its devices across a restart: every device's kept private
versions, written as one snapshot per checkpoint and read back into any dealing of the
devices to shards, with the rounds that will be run again dropped; a missing, foreign or
malformed snapshot is refused with what to do."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pollinate.client.local_state import StateStoreError
from pollinate.shared.config import FederationConfig
from pollinate.shared.errors import PollinateError
from pollinate.simulations.engine import simulation_policy
from pollinate.simulations.fast.shard import Shard, ShardSpec
from pollinate.simulations.fast.store import (
    ShardStore,
    concat_packs,
    deal_versions,
    pack_versions,
    read_snapshot,
    write_snapshot,
)

SPEC = {"item_factors.weight": ((6, 3), "float32")}


def shard(tmp_path: Path, partitions: tuple[int, ...]) -> Shard:
    cfg = FederationConfig.from_mapping({"dataset": "synthetic", "out": str(tmp_path)})
    policy = replace(simulation_policy(cfg), run_ledger=None)
    return Shard(ShardSpec(partitions, policy, SPEC, "none", "rating", False, None, "equal"))


def private(value: float) -> dict[str, np.ndarray]:
    return {
        "user_factors.weight": np.full((1, 3), value, np.float32),
        "user_bias.weight": np.full((1, 1), -value, np.float32),
    }


def played(tmp_path: Path) -> Shard:
    """Devices 0 and 2 of a shard: 0 trained in rounds 1, 2 and 3 (two versions kept),
    2 in round 2 only; device 4 only evaluated (a store, no versions)."""
    s = shard(tmp_path, (0, 2, 4))
    for r in (1, 2, 3):
        s._store(0).save(r, private(r))
    s._store(2).save(2, private(20))
    s._store(4)
    return s


def test_a_snapshot_round_trips_every_kept_version_into_another_dealing(tmp_path: Path) -> None:
    path = tmp_path / "states.npz"
    write_snapshot(path, 3, 6, concat_packs([played(tmp_path).snapshot(), pack_versions([])]))
    written, pack = read_snapshot(path, 6)
    assert written == 3
    assert sorted(zip(pack["partition"].tolist(), pack["round"].tolist(), strict=True)) == [
        (0, 2), (0, 3), (2, 2)]  # fmt: skip
    # Dealt to two shards as --workers 2 would: devices 0, 2, 4 | 1, 3, 5.
    even, odd = shard(tmp_path, (0, 2, 4)), shard(tmp_path, (1, 3, 5))
    mine = np.flatnonzero(pack["partition"] % 2 == 0)
    assert even.restore({k: v[mine] for k, v in pack.items()}) == 2
    assert odd.restore({k: v[:0] for k, v in pack.items()}) == 0
    np.testing.assert_array_equal(even.stores[0].load(4)["user_factors.weight"], private(3)[
        "user_factors.weight"])  # fmt: skip
    np.testing.assert_array_equal(even.stores[0].load(3)["user_bias.weight"], [[-2.0]])
    assert even.stores[2].load(3)["user_factors.weight"][0, 0] == 20
    assert even.stores[2].load(2) is None and not odd.stores
    # Another shard's devices are refused rather than kept where nobody plays them.
    with pytest.raises(PollinateError, match="not in this shard"):
        odd.restore(pack)


def test_versions_of_the_rounds_to_run_again_are_dropped(tmp_path: Path) -> None:
    """Written after round 3 but the checkpoint is of round 2 (a crash between the two
    writes): device 0 restarts round 3 from its round-2 version, as if never past it."""
    pack = played(tmp_path).snapshot()
    owner = {p: p % 2 for p in range(6)}
    even, odd = deal_versions(pack, owner, 2, through_round=2)
    assert len(odd["partition"]) == 0 and set(odd) == set(pack)
    target = shard(tmp_path, (0, 2, 4))
    assert target.restore(even) == 2
    assert sorted(target.stores[0].versions) == [2]
    assert target.stores[0].load(4)["user_factors.weight"][0, 0] == 2
    assert deal_versions(pack, owner, 2, through_round=0)[0]["round"].tolist() == []


@pytest.mark.parametrize(
    "damage",
    ["missing", "garbage", "devices", "partition", "round", "nan", "length"],
)
def test_a_missing_foreign_or_malformed_snapshot_is_refused(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "states.npz"
    pack = played(tmp_path).snapshot()
    n_devices = 6
    if damage == "garbage":
        path.write_bytes(b"not a zip file")
    elif damage != "missing":
        if damage == "devices":
            n_devices = 7
        elif damage == "partition":
            pack["partition"][0] = 6
        elif damage == "round":
            pack["round"][0] = 4
        elif damage == "nan":
            pack["param/user_bias.weight"][1] = np.nan
        elif damage == "length":
            pack["param/user_bias.weight"] = pack["param/user_bias.weight"][:2]
        write_snapshot(path, 3, n_devices, pack)
    with pytest.raises(StateStoreError, match=r"does not exist|unreadable|does not describe"):
        read_snapshot(path, 6)


def test_devices_keeping_different_parameters_cannot_be_packed(tmp_path: Path) -> None:
    a, b = ShardStore(None, "device-0", []), ShardStore(None, "device-1", [])
    a.save(1, private(1.0))
    b.save(1, {"user_factors.weight": np.zeros((1, 3), np.float32)})
    with pytest.raises(StateStoreError, match="different private parameters"):
        pack_versions([(0, a), (1, b)])
