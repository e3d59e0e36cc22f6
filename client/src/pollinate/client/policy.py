"""The device's own privacy policy, and the check of every server request against it.

Interaction-level (local) DP protects a user against the server and everyone after it,
so the server must not control it. The policy belongs to the device: a real device
gets it from its owner (the app that embeds the SDK), a simulated one from the
simulation that plays it (Flower node config, key :data:`NODE_CONFIG_KEY`), never from a
server message. A request that would weaken it is refused: the device replies with a
refusal code and nothing else (:func:`pollinate.shared.wire.refusal_content`) and logs
why locally.

What the policy fixes, and what a request may not change:

* whether local DP is required, and its noise: a noise multiplier ``noise_multiplier``
  or a lifetime ``target_epsilon`` over ``planned_rounds`` (the device calibrates z
  itself); the largest ``clip``; ``delta``; the lifetime ``epsilon_budget``;
* whether it answers evaluation requests: ``"answer"`` (plain sums: only without local
  DP), ``"noised"`` (a Gaussian release of its sums, noise multiplier ``eval_noise``,
  charged to its accountant) or ``"refuse"``;
* where its state lives (``state_dir``; the accountant must be durable under local DP);
* whether it is simulated, and the simulation's ``noise_seed``, which only a simulated
  device honours and only from its node config;
* local adaptation and the private refit, which read raw rows without noise and are
  therefore refused under local DP.

The device always trains with its policy's values. A request's DP values are only
compared with them: asking for less noise, a larger clip, a larger δ or ε target, no
local DP, a noise seed, another state folder, adaptation or the refit is refused.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from pollinate.shared.errors import ConfigError

#: Node-config key that carries a simulated device's policy (a JSON object).
NODE_CONFIG_KEY = "pollinate-policy"

Evaluation = Literal["answer", "noised", "refuse"]

#: Request keys that only the device itself may set; a request carrying one is refused.
DEVICE_OWNED_KEYS = ("device-state-dir", "noise-seed", "run-ledger")


@dataclass(frozen=True)
class DevicePolicy:
    """What a device will do, whatever the server asks (see the module docstring)."""

    local_dp: bool = False
    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    planned_rounds: int = 1
    clip: float = 0.5
    delta: float | None = None
    epsilon_budget: float | None = None
    evaluation: Evaluation = "answer"
    eval_noise: float = 10.0
    state_dir: str | None = None
    simulated: bool = False
    noise_seed: int | None = None
    #: A simulated device also copies its ledger events here (the run's ledger).
    run_ledger: str | None = None

    def __post_init__(self) -> None:
        if self.local_dp:
            if (self.noise_multiplier is None) == (self.target_epsilon is None):
                raise ConfigError(
                    "a device policy with local DP needs exactly one of noise_multiplier "
                    "and target_epsilon"
                )
            if self.evaluation == "answer":
                raise ConfigError(
                    "a device policy with local DP cannot answer evaluations with plain "
                    "sums: set evaluation to 'noised' or 'refuse'"
                )
        for name in ("noise_multiplier", "target_epsilon", "epsilon_budget", "eval_noise"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"device policy: {name} must be positive, got {value}")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"device policy: clip must be positive, got {self.clip}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"device policy: delta must be in (0, 1), got {self.delta}")
        if self.planned_rounds < 1:
            raise ConfigError(
                f"device policy: planned_rounds must be >= 1, got {self.planned_rounds}"
            )
        if self.evaluation not in ("answer", "noised", "refuse"):
            raise ConfigError(
                f"device policy: evaluation must be 'answer', 'noised' or 'refuse', "
                f"got {self.evaluation!r}"
            )
        if self.noise_seed is not None and not self.simulated:
            raise ConfigError(
                "device policy: a noise seed makes the noise predictable; only a simulated "
                "device may have one"
            )

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> DevicePolicy:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"device policy is not valid JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ConfigError("device policy must be a JSON object")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(
                f"device policy: unknown keys {unknown}; known keys are "
                f"{sorted(cls.__dataclass_fields__)}"
            )
        return cls(**raw)


def policy_from_node_config(node_config: Mapping[str, Any]) -> DevicePolicy:
    """The policy a node was started with, or the default one (no local DP, not simulated,
    no durable store: such a device refuses any local-DP request it cannot honour)."""
    text = node_config.get(NODE_CONFIG_KEY)
    if text is None:
        return DevicePolicy()
    return DevicePolicy.from_json(str(text))


def _number(config: Mapping[str, Any], key: str) -> float | None:
    value = config.get(key)
    return None if value is None else float(value)


def weakening(policy: DevicePolicy, request: Mapping[str, Any], kind: str) -> str | None:
    """Why ``request`` (a server message's config) would weaken ``policy``, or ``None``.

    ``kind`` is ``"train"`` or ``"evaluate"``. Pure: the caller refuses and logs.
    """
    for key in DEVICE_OWNED_KEYS:
        if request.get(key) is not None:
            return f"the request sets {key!r}, which only the device itself may choose"
    if int(request.get("adapt-epochs") or 0) > 0 and policy.local_dp:
        return "local adaptation fits raw rows without noise; the policy requires local DP"
    if request.get("private-refit") and policy.local_dp:
        return "the private refit reads raw ratings without noise; the policy requires local DP"
    if not policy.local_dp:
        if request.get("dp") in ("local", "both"):
            # Stronger protection than the policy asks for, but with the server's
            # parameters: the device has none of its own to train with.
            return "the request asks for local DP, but this device has no local-DP policy"
        return None
    if request.get("dp") not in ("local", "both"):
        return f"the request asks for dp={request.get('dp')!r}; the policy requires local DP"
    if kind == "evaluate":
        return None
    z = _number(request, "local-noise")
    if z is not None and policy.noise_multiplier is not None and z < policy.noise_multiplier:
        return f"the request asks for noise multiplier {z} < the policy's {policy.noise_multiplier}"
    eps = _number(request, "local-epsilon")
    if eps is not None and policy.target_epsilon is not None and eps > policy.target_epsilon:
        return f"the request asks for ε target {eps} > the policy's {policy.target_epsilon}"
    clip = _number(request, "local-clip")
    if clip is not None and clip > policy.clip:
        return f"the request asks for clip {clip} > the policy's {policy.clip}"
    delta = _number(request, "local-delta")
    if delta is not None and policy.delta is not None and delta > policy.delta:
        return f"the request asks for δ {delta} > the policy's {policy.delta}"
    budget = _number(request, "local-epsilon-budget")
    if budget is not None and policy.epsilon_budget is not None and budget > policy.epsilon_budget:
        return f"the request asks for budget {budget} > the policy's {policy.epsilon_budget}"
    return None
