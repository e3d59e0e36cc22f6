"""Recommender models: each declares its global (shared) and local (private) parameters.

Build one by name with :func:`build_model`; the built-in names are ``mf`` and
``interest``.
"""

from __future__ import annotations

from pollinate.shared.models.base import (
    Batch,
    RecModel,
    available_models,
    build_model,
    register_model,
)
from pollinate.shared.models.catalog import BUILTIN_MODELS, BiasedMF, InterestModel

__all__ = [
    "BUILTIN_MODELS",
    "Batch",
    "BiasedMF",
    "InterestModel",
    "RecModel",
    "available_models",
    "build_model",
    "register_model",
]
