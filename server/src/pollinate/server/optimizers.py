"""Server optimizers over the aggregated pseudo-gradient (FedAvg, FedAdam, FedAdagrad).

The pseudo-gradient is the mean update ``Δ`` that the devices sent (new minus old global
parameters). FedAvg applies ``x += η·Δ``; FedAdam and FedAdagrad keep moment estimates
as in Reddi et al., "Adaptive Federated Optimization" (ICLR 2021). Every optimizer has a
``state_dict`` so that checkpoints restore it exactly.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pollinate.shared.errors import ConfigError

Arrays = dict[str, np.ndarray]


class ServerOptimizer:
    """Base: apply a pseudo-gradient to the global parameters."""

    name = "base"

    def __init__(self, lr: float, lr_by_array: Mapping[str, float] | None = None) -> None:
        rates = {"": lr, **(lr_by_array or {})}
        bad = {n: r for n, r in rates.items() if not r > 0}
        if bad:
            raise ConfigError(f"server learning rates must be positive, got {bad}")
        self.lr = lr
        #: Arrays stepped at their own rate instead of ``lr`` (by name).
        self.lr_by_array = dict(lr_by_array or {})

    def rate(self, name: str) -> float:
        """The learning rate of the array ``name``."""
        return self.lr_by_array.get(name, self.lr)

    def step(self, params: Arrays, delta: Mapping[str, np.ndarray]) -> Arrays:
        raise NotImplementedError

    def state_dict(self) -> Arrays:
        return {}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if state:
            raise ConfigError(f"{self.name} keeps no state, got keys {sorted(state)}")


class FedAvg(ServerOptimizer):
    name = "fedavg"

    def step(self, params: Arrays, delta: Mapping[str, np.ndarray]) -> Arrays:
        return {n: (p + self.rate(n) * delta[n]).astype(p.dtype) for n, p in params.items()}


class _Adaptive(ServerOptimizer):
    def __init__(
        self,
        lr: float,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
        lr_by_array: Mapping[str, float] | None = None,
    ) -> None:
        super().__init__(lr, lr_by_array)
        self.beta1, self.beta2, self.tau = beta1, beta2, tau
        self.m: Arrays = {}
        self.v: Arrays = {}

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def step(self, params: Arrays, delta: Mapping[str, np.ndarray]) -> Arrays:
        out: Arrays = {}
        for n, p in params.items():
            d = delta[n].astype(np.float64)
            m = self.m.get(n, np.zeros_like(d))
            v = self.v.get(n, np.full_like(d, self.tau**2))
            m = self.beta1 * m + (1 - self.beta1) * d
            v = self._second_moment(v, d * d)
            self.m[n], self.v[n] = m, v
            out[n] = (p + self.rate(n) * m / (np.sqrt(v) + self.tau)).astype(p.dtype)
        return out

    def state_dict(self) -> Arrays:
        state = {f"m/{n}": a for n, a in self.m.items()}
        state.update({f"v/{n}": a for n, a in self.v.items()})
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self.m = {k[2:]: np.asarray(a) for k, a in state.items() if k.startswith("m/")}
        self.v = {k[2:]: np.asarray(a) for k, a in state.items() if k.startswith("v/")}


class FedAdam(_Adaptive):
    name = "fedadam"

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return self.beta2 * v + (1 - self.beta2) * d2


class FedAdagrad(_Adaptive):
    name = "fedadagrad"

    def __init__(
        self, lr: float, tau: float = 1e-3, lr_by_array: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(lr, beta1=0.0, beta2=1.0, tau=tau, lr_by_array=lr_by_array)

    def _second_moment(self, v: np.ndarray, d2: np.ndarray) -> np.ndarray:
        return v + d2


def make_server_optimizer(
    name: str, lr: float, tau: float = 1e-3, lr_by_array: Mapping[str, float] | None = None
) -> ServerOptimizer:
    """The server optimizer ``name`` at rate ``lr`` (``tau``: the adaptive ones' τ;
    ``lr_by_array``: arrays with a rate of their own, by name)."""
    if name == "fedavg":
        return FedAvg(lr, lr_by_array)
    if name == "fedadam":
        return FedAdam(lr, tau=tau, lr_by_array=lr_by_array)
    if name == "fedadagrad":
        return FedAdagrad(lr, tau=tau, lr_by_array=lr_by_array)
    choices = ["fedadagrad", "fedadam", "fedavg"]
    raise ConfigError(f"unknown server optimizer {name!r}; choose one of {choices}")
