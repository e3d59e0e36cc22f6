"""An exponential moving average of the server's iterates (Polyak-style averaging).

The server optimizer's last iterate jitters from round to round (an adaptive server step
moves every coordinate by about its rate, however small the devices' mean update is);
averaging the iterates cancels much of that jitter. Devices always train from the live
iterate ``x_t``; the *released* model (evaluations, ``global_params.npz``) is the
debiased average

    s_t = β·s_{t−1} + (1 − β)·x_t,    a_t = s_t / (1 − β^t),

so ``a_1 = x_1`` and an early iterate's weight decays as β per round. Under user-level DP
it is post-processing of models that were released anyway, so it costs no ε.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from pollinate.shared.errors import ConfigError

Arrays = dict[str, np.ndarray]


class IterateAverage:
    """The debiased exponential moving average of a sequence of parameter dicts."""

    def __init__(self, beta: float) -> None:
        if not 0.0 <= beta < 1.0:
            raise ConfigError(f"the iterate average's beta must be in [0, 1), got {beta}")
        self.beta = beta
        self.sum: Arrays = {}
        #: ``1 − β^t`` after ``t`` updates: the weight the sum carries.
        self.weight = 0.0

    def update(self, params: Mapping[str, np.ndarray]) -> None:
        b = self.beta
        for n, p in params.items():
            x = np.asarray(p, dtype=np.float64)
            self.sum[n] = b * self.sum[n] + (1 - b) * x if n in self.sum else (1 - b) * x
        self.weight = b * self.weight + (1 - b)

    def value(self, like: Mapping[str, np.ndarray]) -> Arrays:
        """The average, in the dtypes of ``like``; ``like`` itself before any update."""
        if not self.weight:
            return dict(like)
        return {n: (self.sum[n] / self.weight).astype(p.dtype) for n, p in like.items()}

    def state_dict(self) -> Arrays:
        state = {f"sum/{n}": a for n, a in self.sum.items()}
        state["weight"] = np.array(self.weight)
        return state

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        if "weight" not in state:
            raise ConfigError(
                "the checkpoint holds no iterate average; it was written by a run without "
                "--server-ema, so resume it without one"
            )
        self.weight = float(state["weight"])
        self.sum = {k[4:]: np.asarray(a) for k, a in state.items() if k.startswith("sum/")}
