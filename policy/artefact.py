"""The served artefact in memory: :class:`Policy` (the router network, its critics and
``policy.json``), as :func:`policy.checkpoint.load_checkpoint` returns it and the server, the
evaluation and the retrain job use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from contract.observation import ObsLayout, build_obs
from contract.policy_meta import PolicyMeta
from policy.networks import Actor, Critic, RewardCritic


@dataclass
class Policy:
    """A loaded policy: the router network (actor), the critic, and the metadata.

    Attributes:
        path: the version directory it was loaded from.
        meta: the validated ``policy.json``.
        actor: :class:`~policy.networks.Actor`, in eval mode.
        critic: :class:`~policy.networks.Critic`, in eval mode.
        reward_critic: :class:`~policy.networks.RewardCritic` (``meta.network.reward_critic``), else None.
    """

    path: Path
    meta: PolicyMeta
    actor: Actor
    critic: Critic
    reward_critic: RewardCritic | None = None

    @classmethod
    def draft(cls, path: Path, content: dict[str, Any], actor: Actor, critic: Critic,
              reward_critic: RewardCritic | None = None) -> Policy:
        """A policy not yet saved (to evaluate it before :func:`policy.checkpoint.save_checkpoint`): ``content`` as
        for :func:`policy.checkpoint.save_checkpoint`, with version ``"unsaved"`` and a zero weights hash.

        Raises:
            ValueError: ``content`` does not validate.
        """
        meta = PolicyMeta.model_validate({**content, "version": "unsaved", "created_at": datetime.now(UTC).isoformat(),
                                          "weights_sha256": "0" * 64})
        return cls(Path(path), meta, actor, critic, reward_critic)

    @property
    def version(self) -> str:
        return self.meta.version

    @property
    def agents(self) -> list[str]:
        return list(self.meta.agents)

    @property
    def embedding_model(self) -> str:
        return self.meta.embedding.model

    @property
    def layout(self) -> ObsLayout:
        return self.meta.obs_layout

    def build_obs(self, embedding: torch.Tensor, load: torch.Tensor | None, router: int = 0,
                  cost_weight: torch.Tensor | float | None = None,
                  tokens: torch.Tensor | None = None, expected_cost: torch.Tensor | None = None) -> torch.Tensor:
        """Obs of router ``router`` as in training (:func:`contract.observation.build_obs`).

        Args:
            embedding: ``[B, E]`` float32 prompt embeddings.
            load: ``[B, K]`` float32 normalised load, already clipped to ``[0, load_clip]``; None: 0.
            cost_weight: the cost preference (USD^-1; float or ``[B]``) of a policy trained for
                every trade-off; None: its default. Refused (ValueError) by other policies.
            tokens: ``[B]`` int, each prompt's token count (needed when ``layout.agent_prices``).
            expected_cost: ``[B, K]`` float32 USD, ``layout.expected_costs(tokens)`` if already
                computed; None: computed from ``tokens``.

        Returns:
            ``[B, 1, D]`` float32.
        """
        return build_obs(self.layout, embedding, load, router, cost_weight, tokens, expected_cost)

    def probabilities(self, obs: torch.Tensor, action_mask: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`router_probabilities` of this policy's actor."""
        return router_probabilities(self.actor, self.layout, obs, action_mask)

    @torch.no_grad()
    def estimated_rewards(self, obs: torch.Tensor) -> torch.Tensor:
        """``[B, 1, K]`` float32, the reward critic's estimate of every agent for obs ``[B, 1, D]``.

        Raises:
            ValueError: the policy has no reward critic.
        """
        if self.reward_critic is None:
            raise ValueError(f"policy {self.version} has no reward critic")
        return self.reward_critic(obs)


@torch.no_grad()
def router_probabilities(actor: Actor, layout: ObsLayout, obs: torch.Tensor,
                         action_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Routing distribution ``[B, 1, K]`` float32 of one router for obs ``[B, 1, D]`` and mask
    ``[B, 1, K]`` bool.

    With parameter sharing the single network serves any router; without it, router 0's.
    """
    if not actor.share_params:
        n = layout.num_routers
        obs = obs.expand(obs.shape[0], n, obs.shape[-1])
        if action_mask is not None:
            action_mask = action_mask.expand(obs.shape[0], n, action_mask.shape[-1])
        return torch.softmax(actor(obs, action_mask), dim=-1)[:, :1]
    return torch.softmax(actor(obs, action_mask), dim=-1)
