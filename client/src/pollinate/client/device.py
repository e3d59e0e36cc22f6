"""The SDK an app embeds: :class:`Device`, the user's own data and what it may do.

::

    from pollinate.client import Device

    with Device.open("~/.myapp/pollinate.db", passphrase="...") as device:
        device.record("tt0133093", kind="rating", rating=5)
        for rec in device.recommend(k=10):
            print(rec.title, rec.explanation)
        print(device.privacy().summary())

Everything lives in one encrypted store (:mod:`pollinate.client.store`). Training
happens when the device joins a federation (``pollinate device join``): the ClientApp
opens the same store, trains on its events under :attr:`Device.policy`, writes the
release into the ledger first, and keeps the global model and catalogue it received,
which :meth:`Device.recommend` then uses without any network.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pollinate.client.events import known_events
from pollinate.client.keys import StoreError, key_from_file, key_from_keyring
from pollinate.client.policy import DevicePolicy
from pollinate.client.recommend import Recommendation, recommend
from pollinate.client.store import EncryptedStore, Event, GlobalModel, validate_event
from pollinate.shared.catalogue import Catalogue

EXPORT_FORMAT = "pollinate-device-export/1"


@dataclass(frozen=True)
class PrivacyReport:
    """What the device has spent and released, from its own ledger and release log."""

    #: ε spent per layer. ``local`` (one interaction, replace-one, δ below): from this
    #: device's ledger. ``user`` (all of a user's data): accounted by the server, which
    #: the device does not see; ``None`` here (see the run's audit report).
    epsilon: dict[str, float | None]
    delta: float | None
    budget: float | None
    #: Budget left (``None`` when the policy sets no budget).
    budget_left: float | None
    local_dp: bool
    #: Every release (what left the device): round, kind, arrays (name, shape, dtype,
    #: bytes), metrics.
    releases: list[dict[str, Any]] = field(default_factory=list)
    #: The ledger events (the accountant), as dicts.
    ledger: list[dict[str, Any]] = field(default_factory=list)

    @property
    def bytes_released(self) -> int:
        return sum(a["bytes"] for r in self.releases for a in r["arrays"])

    def summary(self) -> str:
        eps = self.epsilon["local"]
        spent = "no local DP" if not self.local_dp and not eps else f"local ε = {eps:.3g}"
        left = "" if self.budget_left is None else f", {self.budget_left:.3g} of {self.budget} left"
        return (
            f"{spent}{left}; {len(self.releases)} releases, {self.bytes_released} bytes "
            "have left the device"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "epsilon": self.epsilon,
            "delta": self.delta,
            "budget": self.budget,
            "budget_left": self.budget_left,
            "local_dp": self.local_dp,
            "bytes_released": self.bytes_released,
            "releases": self.releases,
            "ledger": self.ledger,
        }


class Device:
    """One user's device: their events, private parameters, policy and privacy ledger,
    in one encrypted store. Open with :meth:`open`; close with :meth:`close` (or use it
    as a context manager)."""

    def __init__(self, store: EncryptedStore) -> None:
        self.store = store
        self._model: tuple[int, GlobalModel | None] | None = None

    # ------------------------------------------------------------- opening
    @classmethod
    def open(
        cls,
        path: Path | str,
        *,
        passphrase: str | None = None,
        key: bytes | None = None,
        key_file: Path | str | None = None,
        keyring: tuple[str, str] | None = None,
    ) -> Device:
        """Open (or create) the device's store at ``path`` with exactly one key source:
        a ``passphrase`` (Argon2id), a raw 32-byte ``key``, a ``key_file`` (0600), or the
        platform ``keyring`` as ``(service, user)`` (a random key is created there the
        first time). A wrong key raises :class:`~pollinate.client.keys.StoreKeyError`."""
        given = [x is not None for x in (passphrase, key, key_file, keyring)]
        if sum(given) != 1:
            raise StoreError(
                "give exactly one of passphrase=, key=, key_file= or keyring=(service, user)"
            )
        path = Path(path).expanduser()
        if passphrase is not None:
            return cls(EncryptedStore.open_with_passphrase(path, passphrase))
        if key_file is not None:
            key = key_from_file(key_file)
        elif keyring is not None:
            service, user = keyring
            key = key_from_keyring(service, user)
        assert key is not None
        return cls(EncryptedStore.open(path, key))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Device:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------- events
    def record(
        self,
        item: str,
        kind: str = "view",
        rating: float | None = None,
        timestamp: float | None = None,
    ) -> int:
        """Record that the user did ``kind`` with ``item`` (the app's own id). ``kind`` is
        one of :data:`pollinate.client.store.EVENT_KINDS`; ``rating`` a finite number
        (inside the catalogue's rating scale once a catalogue is known), required for
        ``kind="rating"``; ``timestamp`` seconds since the epoch (now when None). A bad
        event raises :class:`~pollinate.client.keys.StoreError` and stores nothing.
        Items the catalogue does not know yet are kept and count once it does."""
        item, kind, value, ts = validate_event(item, kind, rating, timestamp)
        model = self.global_model()
        scale = None if model is None else model.catalogue.rating_scale
        if value is not None and scale is not None and not scale[0] <= value <= scale[1]:
            raise StoreError(f"rating {value} is outside the catalogue's scale {scale}")
        return self.store.add_event(item, kind, value, ts)

    def events(self) -> list[Event]:
        return self.store.events()

    def forget(self, item: str | None = None) -> int:
        """Delete the user's data on this device: the events of ``item``, or every event
        when ``item`` is None, and the private parameters trained on them (they are
        retrained from what is left at the next round). The deleted records are
        overwritten in the file (SQLite ``secure_delete``, WAL checkpointed).

        What it cannot delete: what has already left the device. Model updates released
        in earlier rounds were aggregated by the server into the global model; they
        cannot be recalled. Differential privacy is what protects them: each release was
        noised and accounted (see :meth:`privacy`), so what it reveals about any one
        interaction is bounded by ε. The privacy ledger and the log of releases are kept
        (they hold no item ids): deleting them would make the device under-count ε.
        Returns the number of events deleted."""
        if item is not None and (not isinstance(item, str) or not item):
            raise StoreError(f"item must be a non-empty string or None, got {item!r}")
        return self.store.forget(item)

    # ------------------------------------------------------------- model
    def global_model(self) -> GlobalModel | None:
        """The last global model received (cached until a newer one is stored)."""
        version = self.store.global_version()
        if self._model is None or self._model[0] != version:
            self._model = (version, self.store.global_model())
        return self._model[1]

    @property
    def catalogue(self) -> Catalogue | None:
        model = self.global_model()
        return None if model is None else model.catalogue

    def set_global(
        self,
        round_: int,
        params: Mapping[str, np.ndarray],
        catalogue: Catalogue,
        model_config: Mapping[str, Any],
    ) -> None:
        """Keep a global model and catalogue (the ClientApp does this each round; an app
        may also install one it got another way, e.g. bundled with the app)."""
        self.store.save_global(round_, params, catalogue, model_config)

    def set_catalogue(self, catalogue: Catalogue) -> None:
        """Keep a catalogue without a model (round 0): the device recommends from content
        and popularity until it receives a global model."""
        self.store.save_global(0, {}, catalogue, {"model": None})

    def recommend(self, k: int = 10, explain: bool = True) -> list[Recommendation]:
        """The top ``k`` catalogue items the user has not seen, each with its explanation
        (``because``: the liked items whose removal would lower its score the most). A
        device without a model or with no events gets popular items spread over genres;
        without a catalogue there is nothing to recommend (an empty list)."""
        model = self.global_model()
        if model is None:
            return []
        private = self.store.load(before_round=2**62)
        return recommend(self.store.events(), model.catalogue, model, private, k=k, explain=explain)

    # ------------------------------------------------------------- privacy
    @property
    def policy(self) -> DevicePolicy:
        """The device's own privacy policy (stored; the server cannot change it)."""
        return self.store.policy()

    @policy.setter
    def policy(self, policy: DevicePolicy) -> None:
        self.store.set_policy(policy)

    def privacy(self) -> PrivacyReport:
        """ε spent (from the device's ledger), budget left, and what left the device."""
        policy = self.policy
        ledger = [e for e in self.store.ledger() if e.layer == "local"]
        spent = max((e.epsilon for e in ledger), default=0.0)
        delta = ledger[-1].delta if ledger else policy.delta
        budget = policy.epsilon_budget
        return PrivacyReport(
            epsilon={"local": spent, "user": None},
            delta=delta,
            budget=budget,
            budget_left=None if budget is None else max(0.0, budget - spent),
            local_dp=policy.local_dp,
            releases=self.store.releases(),
            ledger=[_event_dict(e) for e in ledger],
        )

    # ------------------------------------------------------------- export
    def export(self) -> dict[str, Any]:
        """The user's own data, decrypted, as one JSON-able dict (format
        ``pollinate-device-export/1``, documented in docs/sdk.md)."""
        events = self.store.events()
        model = self.global_model()
        known = set()
        if model is not None:
            known = {e.id for e, _ in known_events(events, model.catalogue)}
        private = self.store.load(before_round=2**62)
        return {
            "format": EXPORT_FORMAT,
            "exported_at": _dt.datetime.now(_dt.UTC).isoformat(),
            "device_key": self.store.device_key(),
            "events": [
                {
                    "id": e.id,
                    "item": e.item,
                    "kind": e.kind,
                    "rating": e.rating,
                    "timestamp": e.timestamp,
                    "in_catalogue": e.id in known,
                }
                for e in events
            ],
            "private_parameters": None
            if private is None
            else {
                name: {"shape": list(v.shape), "dtype": str(v.dtype), "values": v.tolist()}
                for name, v in private.items()
            },
            "policy": _json_policy(self.policy),
            "privacy": self.privacy().to_dict(),
            "global_model": None
            if model is None
            else {
                "round": model.round,
                "model_config": model.model_config,
                "n_items": model.catalogue.n_items,
            },
        }


def _event_dict(e: Any) -> dict[str, Any]:
    import json

    out: dict[str, Any] = json.loads(e.to_json())
    return out


def _json_policy(policy: DevicePolicy) -> dict[str, Any]:
    import json

    out: dict[str, Any] = json.loads(policy.to_json())
    return out
