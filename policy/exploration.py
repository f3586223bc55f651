"""Exploration that goes where it pays: inverse gap weighting over the reward critic's estimates.

SquareCB (Foster and Rakhlin 2020, "Beyond UCB: Optimal and Efficient Contextual Bandits with
Regression Oracles", arXiv 2002.04926, Algorithm 1): given each allowed agent's estimated reward
``q̂_k`` and a leader ``b``, every other agent gets ``p_k = 1 / (K_a + γ (q̂_b - q̂_k))`` and the
leader the rest. An agent close to the leader is tried often, one far behind rarely; ``γ`` grows
with the data (``γ = gamma_scale · sqrt(K · n)`` for ``n`` logged decisions, the schedule of
SquareCB's analysis, ``γ ∝ sqrt(K T)``, and of Vowpal Wabbit's ``--squarecb``), so exploration
fades as the critic learns. The leader here is the actor's choice (the policy routes, the critic
says where to look), so a gap is ``max(0, q̂_b - q̂_k)``.

Gaps can be measured optimistically, to each agent's upper confidence bound
``q̂_k + optimism · σ_k(x)`` (``σ_k`` the critic's posterior width,
:meth:`policy.networks.RewardCritic.width`): an agent the critic knows little about for this
prompt is tried as if it were close to the leader, one it knows well by its estimated gap. This is
the optimism of RegCB (Foster, Agarwal, Dudík, Luo and Schapire 2018, "Practical Contextual Bandits
with Regression Oracles", arXiv 1803.01088, sec. 3), which with inverse gap weighting is the
bake-off's leading family (Bietti, Agarwal and Langford 2021, JMLR 22(133), sec. 6).

An agent added at run time is *young* until the critic has ``young_records`` of its records
(:class:`~contract.policy_meta.ExplorationMeta` ``young``): it is tried as if it were level with the
leader, on every prompt: without that, its few explored records would
come from the prompts where the leader is weakest (where its gap is smallest) and teach the critic
that it is weak everywhere. Nor is a young agent the leader while another agent is allowed
(:meth:`router.service.RoutingService.distribution_from_estimates`): the actor would choose it
where the others' estimates are lowest, the hard prompts, with the same effect. This is the
forced exploration of a new arm (each arm tried a minimum number of times before the index rule
takes over, as in UCB's initialisation, Auer, Cesa-Bianchi and Fischer 2002, Machine Learning 47,
sec. 2).
"""

from __future__ import annotations

import math

import numpy as np


def igw_gamma(records: int, num_agents: int, gamma_scale: float) -> float:
    """``γ = gamma_scale · sqrt(K · n)`` for ``n`` records the critic was fitted on (0: uniform)."""
    return gamma_scale * math.sqrt(max(0, records) * num_agents)


def inverse_gap_weighting(reward: np.ndarray, mask: np.ndarray, leader: int, gamma: float,
                          width: np.ndarray | None = None, optimism: float = 0.0,
                          young: np.ndarray | None = None) -> np.ndarray:
    """SquareCB's sampling distribution, with optimistic gaps when ``width`` is given.

    Args:
        reward: ``[K]`` float, the critic's estimated reward of each agent (reward units).
        mask: ``[K]`` bool, allowed agents (``leader`` among them).
        leader: index of the agent the policy would choose.
        gamma: ``γ >= 0`` (:func:`igw_gamma`); 0 gives the uniform choice over allowed agents.
        width: ``[K]`` float, the critic's posterior standard deviation of each estimate (None: 0).
        optimism: ``β >= 0``: a gap is ``max(0, q̂_b - q̂_k - β σ_k)``.
        young: ``[K]`` bool, agents with too few records to judge: their gap is 0 (None: none).

    Returns:
        ``[K]`` float64 summing to 1, 0 where ``mask`` is False.

    Raises:
        ValueError: ``leader`` is not allowed.
    """
    if not mask[leader]:
        raise ValueError(f"leader {leader} is masked")
    allowed = mask.astype(bool)
    k_allowed = int(allowed.sum())
    upper = reward.astype(np.float64)
    if width is not None and optimism > 0.0:
        upper = upper + optimism * width.astype(np.float64)
    gap = np.maximum(0.0, float(reward[leader]) - upper)
    if young is not None:
        gap = np.where(young, 0.0, gap)
    p = np.where(allowed, 1.0 / (k_allowed + max(0.0, gamma) * gap), 0.0)
    p[leader] = 0.0
    p[leader] = max(0.0, 1.0 - p.sum())
    return p / p.sum()
