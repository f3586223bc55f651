"""Preallocated on-device rollout buffer ``[T, B, N, ...]`` for MAPPO."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from training.batch import PPOBatch
from training.gae import generalized_advantage_estimate
from training.update import minibatch_indices


class RolloutBuffer:
    """Holds one rollout of ``T`` steps of ``B`` worlds with ``N`` routers each.

    All storage is allocated once, on ``device``; :meth:`add` writes step ``t`` in place.

    Attributes:
        obs: ``[T, B, N, D]`` float32.
        state: ``[T, B, S]`` float32.
        action_mask: ``[T, B, N, K]`` bool.
        action: ``[T, B, N]`` int64.
        log_prob: ``[T, B, N]`` float32, log-prob of ``action`` under the collecting policy.
        reward: ``[T, B, N]`` float32.
        value: ``[T, B, N]`` float32, ``V(s_t)``.
        next_value: ``[T, B, N]`` float32, ``V(s'_t)`` of the true next state (pre-reset).
        terminated, truncated: ``[T, B]`` bool.
        advantage, returns: ``[T, B, N]`` float32, filled by :meth:`compute_advantages`.
        probs, reward_all, action_advantage: ``[T, B, N, K]`` float32 with ``all_actions`` (else
            None): the collecting policy, every action's reward, and every action's advantage
            (filled by :meth:`compute_advantages`).

    Args:
        all_actions: also hold every action's probability and reward (the ``expected`` estimator).
    """

    def __init__(self, T: int, B: int, N: int, obs_dim: int, state_dim: int, num_actions: int,
                 device: str | torch.device, all_actions: bool = False) -> None:
        self.T, self.B, self.N = T, B, N
        self.all_actions = all_actions

        def zeros(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=device)

        self.obs = zeros(T, B, N, obs_dim)
        self.state = zeros(T, B, state_dim)
        self.action_mask = zeros(T, B, N, num_actions, dtype=torch.bool)
        self.action = zeros(T, B, N, dtype=torch.long)
        self.log_prob = zeros(T, B, N)
        self.reward = zeros(T, B, N)
        self.value = zeros(T, B, N)
        self.next_value = zeros(T, B, N)
        self.terminated = zeros(T, B, dtype=torch.bool)
        self.truncated = zeros(T, B, dtype=torch.bool)
        self.advantage = zeros(T, B, N)
        self.returns = zeros(T, B, N)
        self.probs = zeros(T, B, N, num_actions) if all_actions else None
        self.reward_all = zeros(T, B, N, num_actions) if all_actions else None
        self.action_advantage = zeros(T, B, N, num_actions) if all_actions else None

    def add(self, t: int, *, obs: torch.Tensor, state: torch.Tensor, action_mask: torch.Tensor,
            action: torch.Tensor, log_prob: torch.Tensor, reward: torch.Tensor, value: torch.Tensor,
            next_value: torch.Tensor, terminated: torch.Tensor, truncated: torch.Tensor,
            probs: torch.Tensor | None = None, reward_all: torch.Tensor | None = None) -> None:
        """Write step ``t`` of every field (shapes as the attributes', without ``T``), in place.

        Raises:
            ValueError: ``probs`` and ``reward_all`` missing with ``all_actions``, or given without.
        """
        if (probs is not None, reward_all is not None) != (self.all_actions, self.all_actions):
            raise ValueError("probs and reward_all are given exactly when the buffer holds all actions")
        self.obs[t].copy_(obs)
        self.state[t].copy_(state)
        self.action_mask[t].copy_(action_mask)
        self.action[t].copy_(action)
        self.log_prob[t].copy_(log_prob)
        self.reward[t].copy_(reward)
        self.value[t].copy_(value)
        self.next_value[t].copy_(next_value)
        self.terminated[t].copy_(terminated)
        self.truncated[t].copy_(truncated)
        if self.probs is not None and self.reward_all is not None:
            self.probs[t].copy_(probs)
            self.reward_all[t].copy_(reward_all)

    def compute_advantages(self, gamma: float, gae_lambda: float) -> None:
        """Fill ``advantage`` and ``returns`` with GAE over the whole buffer, in place (no allocation
        but GAE's ``[T, B, N]`` discount mask and ``[B, N]`` carry)."""
        shape = self.value.shape
        done = (self.terminated | self.truncated).unsqueeze(-1).expand(shape)
        terminated = self.terminated.unsqueeze(-1).expand(shape)
        generalized_advantage_estimate(self.reward, self.value, self.next_value, done, terminated, gamma,
                                       gae_lambda, out=(self.advantage, self.returns))
        if self.action_advantage is not None and self.reward_all is not None:
            # action k would have earned reward_all[k] instead of reward, with the same continuation
            torch.sub(self.reward_all, self.reward.unsqueeze(-1), out=self.action_advantage)
            self.action_advantage.add_(self.advantage.unsqueeze(-1))

    def minibatch_indices(self, num_minibatches: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """Shuffled indices into the flattened ``T * B`` samples (a sample keeps its N routers), drawn
        as :func:`training.update.ppo_update` draws one epoch's."""
        yield from minibatch_indices(self.T * self.B, num_minibatches, generator)

    def ppo_batch(self) -> PPOBatch:
        """The rollout as one :class:`~training.batch.PPOBatch` of ``M = T * B`` samples (views, no
        copy): ``returns`` and ``value`` on the critic's raw scale, ``probs`` and
        ``action_advantage`` with ``all_actions``. Call :meth:`compute_advantages` first."""
        m = self.T * self.B

        def flat(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(m, *x.shape[2:])

        return PPOBatch(
            obs=flat(self.obs), state=flat(self.state), action_mask=flat(self.action_mask), action=flat(self.action),
            log_prob=flat(self.log_prob), advantage=flat(self.advantage), returns=flat(self.returns),
            value=flat(self.value), probs=flat(self.probs) if self.probs is not None else None,
            action_advantage=flat(self.action_advantage) if self.action_advantage is not None else None)
