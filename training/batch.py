"""The typed batch of one PPO update: what the rollout buffer and the logged-data reader produce
and :func:`training.update.ppo_update` consumes (the layout of Stable-Baselines3's
``RolloutBufferSamples``, with the multi-agent axis ``N``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class PPOBatch:
    """``M`` samples, each of ``N`` routers, for one PPO update.

    Attributes:
        obs: ``[M, N, D]`` float32.
        state: ``[M, S]`` float32, the global state (the centralised critic's input).
        action_mask: ``[M, N, K]`` bool, True where an agent was allowed.
        action: ``[M, N]`` int64, the agent each router chose.
        log_prob: ``[M, N]`` float32, log-probability of ``action`` under the policy that collected
            it (the old policy; the logging policy for logged feedback).
        advantage: ``[M, N]`` float32.
        returns: ``[M, N]`` float32, the value targets (normalised when the critic is).
        value: ``[M, N]`` float32, the old value estimate, on ``returns``' scale.
        probs: ``[M, N, K]`` float32, the old policy's distribution, or None.
        action_advantage: ``[M, N, K]`` float32, every action's advantage, or None. Given with
            ``probs``, the update uses the expected-gradient loss
            (:func:`training.ppo.expected_ppo_loss`) and ``action``, ``log_prob`` and ``advantage``
            are unused.
    """

    obs: torch.Tensor
    state: torch.Tensor
    action_mask: torch.Tensor
    action: torch.Tensor
    log_prob: torch.Tensor
    advantage: torch.Tensor
    returns: torch.Tensor
    value: torch.Tensor
    probs: torch.Tensor | None = None
    action_advantage: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.obs.shape[0])
