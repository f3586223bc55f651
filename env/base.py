"""The interface the MAPPO trainer needs from a batched multi-agent environment.

:class:`~env.prompt_env.PromptEnv` implements it, and so do the adapters in :mod:`env.adapters`
(VMAS, PettingZoo), so that one trainer learns on PromptEnv and on standard benchmarks alike.
Shapes: ``B`` worlds stepped together, ``N`` acting agents (routers, in PromptEnv), ``A`` discrete
actions each, ``D`` obs features, ``S`` global-state features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch


class MultiAgentStepLike(Protocol):
    """What ``reset`` and ``step`` return (fields as in :class:`MultiAgentStep`)."""

    obs: torch.Tensor
    state: torch.Tensor
    action_mask: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    final_state: torch.Tensor

    @property
    def done(self) -> torch.Tensor: ...

    def metrics(self) -> dict[str, torch.Tensor]: ...


@dataclass
class MultiAgentStep:
    """One step of ``B`` worlds.

    Attributes:
        obs: ``[B, N, D]`` float32, each agent's observation (after auto-reset).
        state: ``[B, S]`` float32, the global state for a centralised critic.
        action_mask: ``[B, N, A]`` bool, True where an action is allowed.
        reward: ``[B, N]`` float32.
        terminated: ``[B]`` bool, a terminal state was reached (no bootstrap).
        truncated: ``[B]`` bool, a time limit was hit (bootstrap from ``final_*``).
        final_obs, final_state: the true next obs and state before auto-reset.
        info: extra per-step figures (``[B]`` or ``[B, N]`` float) that the trainer averages into
            its metrics.
    """

    obs: torch.Tensor
    state: torch.Tensor
    action_mask: torch.Tensor
    reward: torch.Tensor
    terminated: torch.Tensor
    truncated: torch.Tensor
    final_obs: torch.Tensor
    final_state: torch.Tensor
    info: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def done(self) -> torch.Tensor:
        """``[B]`` bool, ``terminated | truncated``."""
        return self.terminated | self.truncated

    def metrics(self) -> dict[str, torch.Tensor]:
        return self.info


class MultiAgentEnv(Protocol):
    """A batched, auto-resetting multi-agent environment with discrete actions, on a torch device."""

    num_worlds: int
    num_routers: int
    obs_dim: int
    state_dim: int
    device: torch.device

    @property
    def num_actions(self) -> int: ...

    def reset(self, seed: int | None = None) -> MultiAgentStepLike: ...

    def step(self, action: torch.Tensor) -> MultiAgentStepLike:
        """``action``: ``[B, N]`` int64 in ``[0, A)``."""
        ...
