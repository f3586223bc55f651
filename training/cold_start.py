"""A serving policy from an agents file alone (``agent-router init``): no outcome data.

The policy knows nothing yet. Its reward critic (:class:`~policy.networks.RewardCritic`) starts
at each agent's ``prior_quality`` (0 when the agents file gives none), its actor prefers the agents
with the highest prior (uniform without priors), and its exploration is inverse gap weighting with
``γ = 0``, the uniform choice, so ``explore: true`` tries every agent from the first request. Each
round of ``agent-router retrain`` then refits it on the logged feedback
(:mod:`training.retrain.bandit_round`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from contract.errors import UserError
from contract.observation import ObsLayout
from contract.policy_meta import ExplorationMeta, NetworkMeta
from contract.pricing import expected_costs_usd
from env.dataset import AgentSpec, load_agents
from env.embedder import DEFAULT_MODEL, canonical_model_id
from policy.checkpoint import save_checkpoint
from policy.networks import NetworkShape, build_networks, build_reward_critic
from training.retrain.config import RetrainConfig

#: prompt length (tokens) whose expected cost scales the expected-cost features of a cold start
COST_SCALE_TOKENS = 512
#: prior gaps become actor logits at the learner's default trust-region step ``kl_temperature``
PRIOR_TEMPERATURE = RetrainConfig.model_fields["kl_temperature"].default
#: the learner's default ``gamma_scale``, recorded for the first rounds
GAMMA_SCALE = RetrainConfig.model_fields["gamma_scale"].default
#: and its ``optimism``
OPTIMISM = RetrainConfig.model_fields["optimism"].default


def _check_prices(agents: list[AgentSpec], cost_weight: float, cost_weight_max: float | None) -> bool:
    """Whether every agent has a price; raises :class:`UserError` where a cost weight needs one, or
    ``cost_weight`` is above ``cost_weight_max``."""
    priced = all(a.price_per_1m_tokens is not None or a.cost_per_call_usd is not None for a in agents)
    if (cost_weight > 0 or cost_weight_max is not None) and not priced:
        missing = ", ".join(a.name for a in agents if a.price_per_1m_tokens is None and a.cost_per_call_usd is None)
        option = f"--cost-weight {cost_weight:g}" if cost_weight > 0 else "--cost-weight-max"
        raise UserError(f"{option} needs a price for every agent; none for {missing}")
    if cost_weight_max is not None and cost_weight > cost_weight_max:
        raise UserError(f"--cost-weight {cost_weight:g} is above --cost-weight-max {cost_weight_max:g}")
    return priced


def cold_start_layout(agents: list[AgentSpec], embed_dim: int, cost_weight: float,
                      cost_weight_max: float | None = None) -> ObsLayout:
    """The observation layout of a cold start: embedding and load, plus the prompt's length and
    each agent's expected cost when every agent has a price (so ``max_cost_usd_per_1k`` works), and
    with ``cost_weight_max`` the request's cost preference (every ``cost_weight`` in
    ``[0, cost_weight_max]`` USD^-1 served, ``cost_weight`` when a request names none).

    Raises:
        UserError: ``cost_weight`` or ``cost_weight_max`` is positive but an agent has no price, or
            ``cost_weight`` is above ``cost_weight_max``.
    """
    priced = _check_prices(agents, cost_weight, cost_weight_max)
    if not priced:
        return ObsLayout(embed_dim=embed_dim, num_agents=len(agents), default_cost_weight=cost_weight)
    prices = tuple(a.price for a in agents)
    scale = float(expected_costs_usd(prices, [COST_SCALE_TOKENS]).mean()) or 1.0
    return ObsLayout(embed_dim=embed_dim, num_agents=len(agents), agent_prices=prices, cost_scale_usd=scale,
                     default_cost_weight=cost_weight, cost_preference=cost_weight_max is not None,
                     cost_weight_max=cost_weight_max)


def init_policy(agents_path: str | Path, out: str | Path, embedding_model: str = DEFAULT_MODEL,
                embed_dim: int | None = None, cost_weight: float = 0.0, hidden: tuple[int, ...] = (256, 256),
                gamma_scale: float = GAMMA_SCALE, seed: int = 0, cost_weight_max: float | None = None) -> Path:
    """Write a cold-start policy version under ``out`` and return its directory.

    Args:
        agents_path: the agents file (JSON or YAML; optional ``prior_quality`` per agent).
        out: the checkpoint root (created if missing).
        embedding_model: the sentence embedding model the server will encode prompts with.
        embed_dim: its width; None: load the model once to read it.
        cost_weight: reward per USD the learner will use (``quality - cost_weight * cost_usd``); with
            ``cost_weight_max``, that of a request that names none.
        hidden: the actor's and the critic's hidden layers.
        gamma_scale: exploration's ``γ`` scale, recorded for the first rounds.
        seed: initialises the networks.
        cost_weight_max: serve every request's own ``cost_weight`` in ``[0, cost_weight_max]``
            (USD^-1) from this one policy; its reward critic then learns each agent's quality and
            cost apart (:class:`policy.networks.PreferenceRewardCritic`). None: one cost weight.

    Raises:
        DataError: the agents file breaks the contract; UserError: see :func:`cold_start_layout`.
    """
    agents = load_agents(agents_path)
    _check_prices(agents, cost_weight, cost_weight_max)  # before the model is loaded
    if embed_dim is None:
        from env.embedder import Embedder

        embed_dim = Embedder(embedding_model, cache_dir=None, progress=False).dim
    layout = cold_start_layout(agents, embed_dim, cost_weight, cost_weight_max)
    network = NetworkMeta(hidden=hidden, share_params=True, centralised_critic=True, reward_critic=True)
    torch.manual_seed(seed)
    actor, critic = build_networks(network, NetworkShape.of_layout(layout))
    priors = [a.prior_quality for a in agents]
    known = [p for p in priors if p is not None]
    reward_critic = build_reward_critic(layout, [p if p is not None else (sum(known) / len(known) if known else 0.0)
                                                 for p in priors])
    with torch.no_grad():  # the actor starts at the priors: uniform when there are none
        last = actor.net.net[-1]
        last.weight.zero_()
        last.bias.copy_((reward_critic.bias - reward_critic.bias.mean()) / PRIOR_TEMPERATURE)
    meta = {
        "agents": [a.name for a in agents],
        "agent_specs": [a.model_dump() for a in agents],
        "capacities": [a.capacity for a in agents],
        "embedding": {"model": canonical_model_id(embedding_model), "dim": embed_dim},
        "obs_layout": layout.model_dump(mode="json"),
        "network": network.model_dump(mode="json"),
        "training": None,
        "exploration": ExplorationMeta(gamma=0.0, gamma_scale=gamma_scale, records=0,
                                       optimism=OPTIMISM).model_dump(),
        "data": {"source": f"init: {Path(agents_path).name}", "prompts": 0},
    }
    return save_checkpoint(out, actor, critic, meta, reward_critic)
