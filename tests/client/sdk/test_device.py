"""The Device facade: record/recommend/forget/privacy/policy/export over one store."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import pollinate.client as client
from pollinate.client import Device, DevicePolicy, StoreError, StoreKeyError
from pollinate.client.keys import write_key_file
from pollinate.shared.privacy.ledger import local_event

from .conftest import make_catalogue, make_mf


@pytest.fixture
def device(store_path: Path, key: bytes, mf_config: dict[str, Any]) -> Any:
    with Device.open(store_path, key=key) as dev:
        dev.set_global(1, make_mf(), make_catalogue(), mf_config)
        yield dev


def test_public_names_are_pinned() -> None:
    assert sorted(client.__all__) == [
        "Because", "Catalogue", "Device", "DevicePolicy", "PrivacyReport", "Recommendation",
        "StoreError", "StoreIntegrityError", "StoreKeyError",
    ]  # fmt: skip
    for name in client.__all__:
        assert getattr(client, name).__name__ == name


def test_importing_the_sdk_pulls_neither_ray_nor_the_server_nor_torch() -> None:
    code = (
        "import sys, pollinate.client;"
        "from pollinate.client import Device, Catalogue, DevicePolicy;"
        "import pollinate.client.device, pollinate.client.recommend, pollinate.client.store;"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('ray', 'torch', 'opacus')"
        " or m.startswith('pollinate.server') or m.startswith('pollinate.simulations')];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


def test_open_needs_exactly_one_key_source(store_path: Path, key: bytes) -> None:
    with pytest.raises(StoreError, match="exactly one"):
        Device.open(store_path)
    with pytest.raises(StoreError, match="exactly one"):
        Device.open(store_path, key=key, passphrase="x")


def test_open_with_a_passphrase_and_a_key_file(tmp_path: Path) -> None:
    with Device.open(tmp_path / "a.db", passphrase="open sesame") as dev:
        dev.record("x")
    with pytest.raises(StoreKeyError, match="wrong passphrase"):
        Device.open(tmp_path / "a.db", passphrase="open sesame!")
    kf = tmp_path / "k.key"
    write_key_file(kf)
    with Device.open(tmp_path / "b.db", key_file=kf) as dev:
        dev.record("y")
    with Device.open(tmp_path / "b.db", key_file=kf) as dev:
        assert [e.item for e in dev.events()] == ["y"]


def test_record_validates_and_stores_nothing_on_bad_input(device: Device) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"rating": float("nan")}, "finite"),
        ({"kind": "binge"}, "kind must be one of"),
        ({"rating": 9.0}, "outside the catalogue's scale"),
        ({"kind": "rating"}, "needs a rating"),
    ]
    for kwargs, match in cases:
        with pytest.raises(StoreError, match=match):
            device.record("item-1", **kwargs)
    assert device.events() == []
    device.record("item-1", kind="rating", rating=4.5, timestamp=10.0)
    assert [(e.item, e.kind, e.rating, e.timestamp) for e in device.events()] == [
        ("item-1", "rating", 4.5, 10.0)
    ]


def test_recommendations_change_with_events_and_forget_undoes_them(device: Device) -> None:
    cold = device.recommend(k=5)
    assert [r.source for r in cold] == ["cold-start"] * 5
    liked = ["item-0", "item-4", "item-1", "item-8"]
    for item in liked[:3]:
        device.record(item, kind="rating", rating=5.0)
    assert all(r.source == "cold-start" for r in device.recommend(k=5))  # < 4 events
    device.record(liked[3], kind="rating", rating=5.0)
    warm = device.recommend(k=5)
    assert all(r.source == "model" for r in warm)
    assert [r.item for r in warm] != [r.item for r in cold]
    assert not set(liked) & {r.item for r in warm}
    named = [(r, b) for r in warm for b in r.because]
    assert named
    # fidelity through the facade: forgetting the named item lowers that item's score
    rec, because = named[0]
    device.forget(because.item)
    after = {r.item: r.score for r in device.recommend(k=100)}
    assert after[rec.item] < rec.score
    assert device.forget() == 3
    assert [r.item for r in device.recommend(k=5)] == [r.item for r in cold]


def test_no_catalogue_no_recommendations(store_path: Path, key: bytes) -> None:
    with Device.open(store_path, key=key) as dev:
        dev.record("anything")
        assert dev.recommend() == []


def test_privacy_reports_the_ledger_and_what_left(device: Device) -> None:
    device.policy = DevicePolicy(
        local_dp=True, noise_multiplier=1.0, epsilon_budget=5.0, evaluation="noised"
    )
    report = device.privacy()
    assert report.epsilon == {"local": 0.0, "user": None} and report.budget_left == 5.0
    for r, eps in ((1, 0.8), (2, 1.3)):
        device.store.charge(local_event(
            round_=r, device="1", release=(1.0, 0.1, 10), clip_norm=0.5, delta=1e-4,
            accountant="pld", epsilon=eps,
        ))  # fmt: skip
        device.store.record_release(
            r,
            "train",
            {"item_factors.weight": np.zeros((40, 4), np.float32)},
            {"local-epsilon": eps},
        )
    report = device.privacy()
    assert report.epsilon["local"] == 1.3
    assert report.budget_left == pytest.approx(3.7)
    assert report.delta == 1e-4
    assert [r["round"] for r in report.releases] == [1, 2]
    assert report.bytes_released == 2 * 40 * 4 * 4
    assert "1.3" in report.summary() and "1280 bytes" in report.summary()
    json.dumps(report.to_dict())
    device.forget()
    assert device.privacy().epsilon["local"] == 1.3  # forget keeps the accountant


def test_policy_is_the_devices_and_persists(store_path: Path, key: bytes) -> None:
    policy = DevicePolicy(local_dp=True, target_epsilon=4.0, planned_rounds=10, evaluation="refuse")
    with Device.open(store_path, key=key) as dev:
        assert dev.policy == DevicePolicy()
        dev.policy = policy
    with Device.open(store_path, key=key) as dev:
        assert dev.policy == policy
        with pytest.raises(StoreError, match="DevicePolicy"):
            dev.policy = {"local_dp": False}  # type: ignore[assignment]


def test_export_is_the_documented_json(device: Device) -> None:
    device.record("item-3", kind="like", timestamp=5.0)
    device.record("unknown", timestamp=6.0)
    device.store.save(1, {"user_factors.weight": np.ones((1, 4), np.float32)})
    out = json.loads(json.dumps(device.export()))
    assert out["format"] == "pollinate-device-export/1"
    assert set(out) == {
        "format", "exported_at", "device_key", "events", "private_parameters", "policy",
        "privacy", "global_model",
    }  # fmt: skip
    assert [(e["item"], e["kind"], e["in_catalogue"]) for e in out["events"]] == [
        ("item-3", "like", True), ("unknown", "view", False)
    ]  # fmt: skip
    assert out["private_parameters"]["user_factors.weight"]["values"] == [[1.0] * 4]
    assert out["global_model"] == {"round": 1, "model_config": {"model": "mf", "task": "rating",
                                   "embedding-dim": 4}, "n_items": 40}  # fmt: skip
    assert out["device_key"] == device.store.device_key()


def test_device_data_trains_on_known_events_only(device: Device) -> None:
    for i, item in enumerate(["item-1", "later-item", "item-2", "item-5", "item-7"]):
        device.record(item, kind="rating", rating=float(1 + i % 5), timestamp=float(i))
    cat = device.catalogue
    assert cat is not None
    data = device.store.device_data(cat, "ranking")
    assert list(data.data.items) == [1, 2, 5, 7]
    assert list(data.split.test) == [3] and list(data.split.valid) == [2]
    rating = device.store.device_data(cat, "rating")
    assert list(rating.data.ratings) == [1.0, 3.0, 4.0, 5.0]
    with pytest.raises(StoreError, match="nothing to train on"):
        device.forget()
        device.store.device_data(cat, "ranking")


@pytest.mark.parametrize(("task", "loss"), [("ranking", "bpr"), ("rating", "mse")])
def test_the_trainer_trains_on_the_stores_device_data(device: Device, task: str, loss: str) -> None:
    """What the ClientApp does on a real device: train on store.device_data, save the
    private parameters, and the recommender then uses them as its prior."""
    torch = pytest.importorskip("torch")
    from pollinate.client.training import LocalTrainConfig, train_device
    from pollinate.shared.models.base import build_model

    for i in range(8):
        device.record(f"item-{4 * i}", kind="rating", rating=5.0, timestamp=float(i))
    cat = device.catalogue
    assert cat is not None
    data = device.store.device_data(cat, task)
    model = build_model("mf", n_users=1, n_items=cat.n_items, dim=4, global_mean=3.0)
    model.load_global_state({k: v for k, v in make_mf().items()})
    cfg = LocalTrainConfig(loss=loss, reg=0.0, negatives=4, epochs=2, batch_size=4,
                           lr_global=0.05, lr_local=0.05, history_len=0)  # fmt: skip
    outcome = train_device(model, data, cfg, torch.Generator().manual_seed(0))
    assert set(outcome.update) == set(model.global_parameter_names())
    assert outcome.n_examples == len(data.split.train)
    params = dict(model.named_parameters())
    private = {k: params[k].detach().numpy().copy() for k in model.local_parameter_names()}
    device.store.save(1, private)
    recs = device.recommend(k=3)
    assert len(recs) == 3 and recs[0].source == "model"


def test_unknown_items_are_kept_and_used_once_the_catalogue_knows_them(
    store_path: Path, key: bytes
) -> None:
    from pollinate.client import Catalogue

    old = make_catalogue(40)
    with Device.open(store_path, key=key) as dev:
        dev.set_catalogue(old)
        dev.record("new-film", kind="like", timestamp=1.0)
        dev.record("item-3", kind="like", timestamp=2.0)
        assert list(dev.store.device_data(old, "ranking").data.items) == [3]
        recs = dev.recommend(k=40)
        assert all(r.source == "cold-start" for r in recs)
        assert {b.item for r in recs for b in r.because} == {"item-3"}
        genres = np.r_[old.genres, np.eye(1, 4, 0, dtype=np.float32)]
        new = Catalogue(item_ids=np.r_[old.item_ids, ["new-film"]], genres=genres,
                        genre_names=old.genre_names, popularity=np.r_[old.pop, 5.0])  # fmt: skip
        dev.set_catalogue(new)
        assert list(dev.store.device_data(new, "ranking").data.items) == [40, 3]
        recs = dev.recommend(k=41)
        assert "new-film" not in {r.item for r in recs}
        assert "new-film" in {b.item for r in recs for b in r.because}
