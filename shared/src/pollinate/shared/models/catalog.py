"""The built-in models. Importing this module registers them with
:func:`pollinate.shared.models.base.register_model`."""

from __future__ import annotations

from pollinate.shared.models.interest import InterestModel
from pollinate.shared.models.mf import BiasedMF

BUILTIN_MODELS: tuple[str, ...] = (BiasedMF.name, InterestModel.name)

__all__ = ["BUILTIN_MODELS", "BiasedMF", "InterestModel"]
