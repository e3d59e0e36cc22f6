"""What every recommender model in Pollinate is: a torch module whose parameters split
into **global** ones (shared through the server) and **local** ones (private to a user).

A batch is a ``dict[str, Tensor]`` with a leading batch dimension on every entry:

``user``      (B,) long   user index (always 0 on a device, which holds one user)
``item``      (B,) long   target item
``rating``    (B,) float  target rating (rating task only)
``hist``      (B, L) long the user's previous items, most recent last, padded on the
                          left with ``n_items`` (the padding index)
``hist_gap``  (B, L) long bucketed time gap between each history item and the target

Scoring goes through the modules' own ``forward`` calls (never a bare ``weight``), so
Opacus can compute per-example gradients of every parameter.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

from pollinate.shared.errors import ModelError

Batch = Mapping[str, torch.Tensor]


class RecModel(nn.Module, abc.ABC):
    """Base class: a scorer of (user context, item) pairs with a global/local split."""

    name: ClassVar[str]
    #: Name prefixes of the parameters that are private to a user.
    LOCAL_PREFIXES: ClassVar[tuple[str, ...]]
    #: Name prefixes of the global parameters that every example uses (a sequence
    #: encoder's dense weights), as opposed to item rows; empty when the model has none.
    ENCODER_PREFIXES: ClassVar[tuple[str, ...]] = ()

    n_users: int
    n_items: int

    def local_parameter_names(self) -> tuple[str, ...]:
        """Names of the parameters that never leave a device."""
        return tuple(n for n, _ in self.named_parameters() if n.startswith(self.LOCAL_PREFIXES))

    def global_parameter_names(self) -> tuple[str, ...]:
        """Names of the parameters that the server aggregates.

        Frozen parameters (``requires_grad`` False) are constants of the model, built
        the same on every device: they are neither trained, sent nor aggregated.
        """
        local = set(self.local_parameter_names())
        return tuple(n for n, p in self.named_parameters() if n not in local and p.requires_grad)

    def encoder_parameter_names(self) -> tuple[str, ...]:
        """The global parameters that every example uses (see ``ENCODER_PREFIXES``)."""
        if not self.ENCODER_PREFIXES:
            return ()
        names = self.global_parameter_names()
        return tuple(n for n in names if n.startswith(self.ENCODER_PREFIXES))

    def global_state(self) -> dict[str, np.ndarray]:
        """Copies of the global parameters as numpy arrays, by name."""
        params = dict(self.named_parameters())
        return {n: params[n].detach().cpu().numpy().copy() for n in self.global_parameter_names()}

    def load_global_state(self, state: Mapping[str, np.ndarray]) -> None:
        """Overwrite the global parameters; names and shapes must match exactly."""
        params = dict(self.named_parameters())
        expected = set(self.global_parameter_names())
        if set(state) != expected:
            raise ModelError(
                f"global state keys {sorted(state)} do not match the model's {sorted(expected)}"
            )
        with torch.no_grad():
            for n, value in state.items():
                if tuple(value.shape) != tuple(params[n].shape):
                    raise ModelError(
                        f"global parameter {n!r} has shape {tuple(value.shape)}, "
                        f"expected {tuple(params[n].shape)}"
                    )
                params[n].copy_(torch.as_tensor(value, dtype=params[n].dtype))

    @abc.abstractmethod
    def score(self, batch: Batch, items: torch.Tensor) -> torch.Tensor:
        """Scores of ``items`` ((B,) or (B, M)) for each example; same shape as ``items``."""

    @abc.abstractmethod
    def score_all(self, batch: Batch) -> torch.Tensor:
        """Scores of every item for each example, (B, n_items). No gradient needed."""


M = TypeVar("M", bound=type[RecModel])
_REGISTRY: dict[str, Callable[..., RecModel]] = {}


def register_model(name: str) -> Callable[[M], M]:
    """Class decorator: make a model available by ``name`` to the CLI and the federation."""

    def deco(cls: M) -> M:
        if name in _REGISTRY:
            raise ModelError(f"a model named {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_models() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def build_model(name: str, **kwargs: Any) -> RecModel:
    """Build the registered model ``name`` with its keyword arguments."""
    # Import the built-in models so they register themselves.
    import pollinate.shared.models.catalog  # noqa: F401

    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ModelError(
            f"unknown model {name!r}; available: {', '.join(available_models())}"
        ) from None
    return factory(**kwargs)
