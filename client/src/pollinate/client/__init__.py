"""The device side of Pollinate: the SDK an edge app embeds (:class:`Device`), its
encrypted store, on-device recommendation, and the Flower ClientApp.

Importing this package is cheap: :class:`Device` and friends load on first use, and
nothing here imports Ray or the server side.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pollinate.client.device import Device, PrivacyReport
    from pollinate.client.keys import StoreError, StoreKeyError
    from pollinate.client.policy import DevicePolicy
    from pollinate.client.recommend import Because, Recommendation
    from pollinate.client.store import StoreIntegrityError
    from pollinate.shared.catalogue import Catalogue

__all__ = [
    "Because",
    "Catalogue",
    "Device",
    "DevicePolicy",
    "PrivacyReport",
    "Recommendation",
    "StoreError",
    "StoreIntegrityError",
    "StoreKeyError",
]

_WHERE = {
    "Because": "pollinate.client.recommend",
    "Catalogue": "pollinate.shared.catalogue",
    "Device": "pollinate.client.device",
    "DevicePolicy": "pollinate.client.policy",
    "PrivacyReport": "pollinate.client.device",
    "Recommendation": "pollinate.client.recommend",
    "StoreError": "pollinate.client.keys",
    "StoreIntegrityError": "pollinate.client.store",
    "StoreKeyError": "pollinate.client.keys",
}


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pollinate.client' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_WHERE[name]), name)


def __dir__() -> list[str]:
    return sorted(__all__)
