"""The ClientApp on a real device: it trains on its encrypted store, under the store's
policy, charges the store's ledger first, and keeps the model and catalogue it got."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from pollinate.client import Device, DevicePolicy
from pollinate.client import app as client_app
from pollinate.client.dp_training import device_epsilon
from pollinate.client.join import STORE_KEY_FILE_NODE_KEY, STORE_NODE_KEY, node_config
from pollinate.client.keys import write_key_file
from pollinate.server.federation import DEVICE_KEYS, initial_global_state
from pollinate.shared.catalogue import Catalogue
from pollinate.shared.config import FederationConfig
from pollinate.shared.tasks import catalog_of, load_task
from pollinate.shared.wire import (
    CATALOGUE_RECORD,
    AllowListError,
    arrays_to_record,
    check_incoming,
    check_outgoing,
    spec_of,
)

CFG = FederationConfig.from_mapping(
    {"synthetic-users": 60, "synthetic-items": 40, "embedding-dim": 4, "out": "unused",
     "dp": "local", "local-noise": 1.0, "local-clip": 0.5}
)  # fmt: skip
TASK = load_task("synthetic", task="rating", synthetic_users=60, synthetic_items=40)
CATALOGUE = Catalogue.from_interactions(TASK.data, TASK.split.train)
PARAMS = initial_global_state(CFG, catalog_of(TASK.data))


@pytest.fixture(autouse=True)
def task_identity() -> Iterator[None]:
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0
    client_app._STORES.clear()
    yield
    for store in client_app._STORES.values():
        store.close()
    client_app._STORES.clear()


def _message(kind: str, round_: int, *, catalogue: bool = True, **extra: Any) -> Message:
    flat = CFG.to_flat()
    config = {k: flat[k] for k in DEVICE_KEYS if flat.get(k) is not None}
    records: dict[str, Any] = {
        "global": arrays_to_record(PARAMS),
        "config": ConfigRecord(dict(config, round=round_, **extra)),
    }
    if catalogue:
        records[CATALOGUE_RECORD] = arrays_to_record(CATALOGUE.to_arrays())
    msg_type = MessageType.TRAIN if kind == "train" else MessageType.EVALUATE
    return Message(RecordDict(records), 1, msg_type)


def _device(tmp_path: Path, *, events: bool = True) -> tuple[Path, Path, Context]:
    key = tmp_path / "store.key"
    write_key_file(key)
    store = tmp_path / "store.db"
    rows = np.flatnonzero(TASK.data.users == 3)
    with Device.open(store, key_file=key) as device:
        if events:
            for r in rows:
                item = str(TASK.data.item_ids[TASK.data.items[r]])
                device.record(item, kind="rating", rating=float(TASK.data.ratings[r]),  # type: ignore[index]
                              timestamp=float(r))  # fmt: skip
            device.record("an-item-the-catalogue-lacks", kind="rating", rating=4.0)
        device.policy = DevicePolicy(local_dp=True, noise_multiplier=1.0, clip=0.5,
                                     evaluation="refuse")  # fmt: skip
    conf: dict[str, Any] = {STORE_NODE_KEY: str(store), STORE_KEY_FILE_NODE_KEY: str(key)}
    ctx = Context(run_id=1, node_id=7, node_config=conf, state=RecordDict(), run_config={})
    return store, key, ctx


def test_a_real_device_trains_on_its_store_and_continues_its_epsilon(tmp_path: Path) -> None:
    store, key, ctx = _device(tmp_path)
    reply = client_app.train(_message("train", 1), ctx).content
    # What leaves: the update of the global parameters and ε, nothing else.
    got = check_incoming(reply, kind="train", spec=spec_of(PARAMS), dp="local")
    assert got.update is not None and set(got.metrics) == {"local-epsilon"}
    with Device.open(store, key_file=key) as device:
        events = device.store.ledger()
        assert len(events) == 1 and events[0].round == 1
        assert got.metrics["local-epsilon"] == pytest.approx(events[0].epsilon)
        kept = device.global_model()
        assert kept is not None and kept.round == 1
        assert list(kept.catalogue.item_ids) == list(CATALOGUE.item_ids)
        assert device.store.load(before_round=2) is not None  # private parameters
        assert len(device.store.releases()) == 1
    # A new ClientApp process (Flower starts one per message): only the store remains.
    client_app._STORES.clear()
    reply2 = client_app.train(_message("train", 2, catalogue=False), ctx).content
    eps2 = check_incoming(reply2, kind="train", spec=spec_of(PARAMS), dp="local").metrics
    with Device.open(store, key_file=key) as device:
        events = device.store.ledger()
    history = [(e.noise_multiplier, e.sample_rate, e.steps) for e in events]
    assert [e.round for e in events] == [1, 2]
    assert eps2["local-epsilon"] == pytest.approx(device_epsilon(history, events[-1].delta))
    assert eps2["local-epsilon"] > got.metrics["local-epsilon"]


def test_the_store_policy_wins_over_the_request(tmp_path: Path) -> None:
    _, _, ctx = _device(tmp_path)
    weaker: dict[str, Any] = {"local-noise": 0.5}
    reply = client_app.train(_message("train", 1, **weaker), ctx).content
    assert dict(reply.metric_records["metrics"]) == {"refused": 1}  # policy
    # No local DP asked although the store's policy requires it: refused as well.
    reply = client_app.train(_message("train", 1, dp="none"), ctx).content
    assert dict(reply.metric_records["metrics"]) == {"refused": 1}


def test_no_catalogue_or_no_events_is_a_no_data_refusal(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    _, _, ctx = _device(tmp_path / "a")
    reply = client_app.train(_message("train", 1, catalogue=False), ctx).content
    assert dict(reply.metric_records["metrics"]) == {"refused": 4}
    (tmp_path / "b").mkdir()
    _, _, empty = _device(tmp_path / "b", events=False)
    reply = client_app.train(_message("train", 1), empty).content
    assert dict(reply.metric_records["metrics"]) == {"refused": 4}


def test_a_wrong_store_key_is_a_state_refusal_and_loses_nothing(tmp_path: Path) -> None:
    store, key, _ = _device(tmp_path)
    other = tmp_path / "other.key"
    write_key_file(other)
    conf: dict[str, Any] = {STORE_NODE_KEY: str(store), STORE_KEY_FILE_NODE_KEY: str(other)}
    bad = Context(run_id=1, node_id=7, node_config=conf, state=RecordDict(), run_config={})
    reply = client_app.train(_message("train", 1), bad).content
    assert dict(reply.metric_records["metrics"]) == {"refused": 5}
    with Device.open(store, key_file=key) as device:
        assert len(device.events()) > 0 and device.store.ledger() == []


def test_enroll_sends_the_store_device_key(tmp_path: Path) -> None:
    store, key, ctx = _device(tmp_path)
    msg = Message(RecordDict(), 1, f"{MessageType.QUERY}.enroll")
    reply = client_app.enroll(msg, ctx).content
    with Device.open(store, key_file=key) as device:
        assert dict(reply.metric_records["metrics"]) == {"device-key": device.store.device_key()}


def test_no_reply_may_echo_the_catalogue() -> None:
    update = {k: np.zeros_like(v) for k, v in PARAMS.items()}
    content = RecordDict(
        {
            "update": arrays_to_record(update),
            CATALOGUE_RECORD: arrays_to_record(CATALOGUE.to_arrays()),
        }
    )
    with pytest.raises(AllowListError, match="catalogue"):
        check_outgoing(content, kind="train", spec=spec_of(PARAMS))


def test_node_config_names_the_store_and_its_key_not_the_key_itself(tmp_path: Path) -> None:
    key = tmp_path / "k"
    secret = write_key_file(key)
    text = node_config(tmp_path / "s.db", key_file=key, keyring=None)
    assert str(key.resolve()) in text and secret.hex() not in text
