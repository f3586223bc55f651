"""Scoring routing rules where agents have limited capacity: every rule runs in PromptEnv.

Queues carry over steps, so what one request does to an agent's backlog changes the next ones'
congestion; a rule is scored by the per-request figures the env reports. Every rule gets an env
built the same way with the same seed: the same prompts arrive in the same order (prompt sampling
and agent outages use only the env's generator, never the actions), so the figures differ only by
the routing.

A :data:`RoutingRule` is a callable ``(env, step) -> actions [B, N] int64`` that sees the env's current
:class:`~env.prompt_env.EnvStep` (obs = embedding ++ normalised load, action mask) and may read
``env.prompt_idx`` (which split prompt each router holds) to look up precomputed predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from contract.errors import UserError
from contract.observation import ObsLayout
from env.config import EnvConfig
from env.prompt_env import EnvStep, PromptEnv
from policy.artefact import Policy

RoutingRule = Callable[[PromptEnv, EnvStep], torch.Tensor]

#: Requests routed per rule by default (over all worlds and routers), at least 4 episodes.
DEFAULT_REQUESTS = 20_000


def default_steps(config: EnvConfig, requests: int = DEFAULT_REQUESTS) -> int:
    """Env steps for about ``requests`` routed requests: a whole number of episodes, at least 4."""
    per_step = config.num_worlds * config.num_routers
    episodes = max(4, math.ceil(requests / (per_step * config.episode_len)))
    return episodes * config.episode_len


def _masked_argmax(score: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    return score.masked_fill(~allowed, -math.inf).argmax(-1)


def policy_rule(policy: Policy) -> RoutingRule:
    """The policy's greedy choice: argmax of its masked probabilities on the env's obs (with load)."""

    @torch.no_grad()
    def route(env: PromptEnv, step: EnvStep) -> torch.Tensor:
        return policy.actor(step.obs, step.action_mask).argmax(-1)

    return route


def check_policy_fits(policy: Policy, config: EnvConfig, embed_dim: int, num_agents: int) -> None:
    """Raise :class:`UserError` when PromptEnv's obs under ``config``, or its router count, do not
    fit the policy's network."""
    layout = policy.layout
    env_layout = ObsLayout(embed_dim=embed_dim, num_agents=num_agents, num_routers=config.num_routers,
                           include_agent_id=config.include_agent_id, load_clip=config.load_clip,
                           agent_prices=layout.agent_prices, cost_scale_usd=layout.cost_scale_usd)
    if env_layout.dim != layout.dim:
        raise UserError(
            f"the capacity env's obs has {env_layout.dim} dims (embedding {embed_dim} + {num_agents} loads"
            f"{' + router id' if config.include_agent_id else ''}), the policy was trained on "
            f"{layout.dim}: use the policy's env.include_agent_id and env.num_routers")
    if not policy.actor.share_params and layout.num_routers != config.num_routers:
        raise UserError(f"the policy has one network per router for {layout.num_routers} routers; "
                        f"the capacity env has env.num_routers={config.num_routers}")


def score_rule(score: np.ndarray | torch.Tensor) -> RoutingRule:
    """Load-blind: per prompt the allowed agent with the highest ``score [P, K]`` (or ``[K]``, the
    same for every prompt: a fixed ranking such as best single agent first)."""
    table = torch.as_tensor(np.asarray(score, dtype=np.float32))

    def route(env: PromptEnv, step: EnvStep) -> torch.Tensor:
        s = table.to(env.device)
        s = s[env.prompt_idx] if s.ndim == 2 else s.expand(*env.prompt_idx.shape, -1)
        return _masked_argmax(s, step.action_mask)

    return route


def load_aware_greedy_rule(score: np.ndarray | torch.Tensor) -> RoutingRule:
    """The best agent by ``score [P, K]`` among those not saturated (normalised load < 1 in the obs,
    i.e. less than one step of backlog); when every allowed agent is saturated, the least loaded
    (ties: the better score). Each router decides on the loads at the start of the step, like the
    policy."""
    table = torch.as_tensor(np.asarray(score, dtype=np.float32))

    def route(env: PromptEnv, step: EnvStep) -> torch.Tensor:
        s = table.to(env.device)[env.prompt_idx]  # [B, N, K]
        load = env.layout.load_of(step.obs)
        allowed = step.action_mask
        free = allowed & (load < 1.0)
        greedy = _masked_argmax(s, free)
        # least loaded, the score breaking ties (scores are small next to a unit of load)
        rank = -load * 1e6 + s
        fallback = _masked_argmax(rank, allowed)
        return torch.where(free.any(-1), greedy, fallback)

    return route


def random_rule(seed: int) -> RoutingRule:
    """Uniform over the allowed agents, from its own seeded generator (not the env's)."""
    gen: dict[str, torch.Generator] = {}

    def route(env: PromptEnv, step: EnvStep) -> torch.Tensor:
        if "g" not in gen:
            gen["g"] = torch.Generator(device=env.device).manual_seed(seed)
        u = torch.rand(step.action_mask.shape, generator=gen["g"], device=env.device)
        return _masked_argmax(u, step.action_mask)

    return route


def score_in_env(
    rules: Mapping[str, RoutingRule],
    embeddings: np.ndarray,
    quality: np.ndarray,
    cost_usd: np.ndarray,
    capacities: Sequence[int | None],
    config: EnvConfig,
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
    agent_names: Sequence[str] | None = None,
    prompt_features: tuple[np.ndarray, ObsLayout] | None = None,
) -> dict[str, dict[str, object]]:
    """Run each rule in its own PromptEnv (same config, same seed) and average per request.

    Args:
        rules: name -> routing rule (see the module docstring).
        embeddings, quality, cost_usd: ``[P, E]``, ``[P, K]``, ``[P, K]`` of the split scored.
        capacities: length ``K``, requests per step (None: unbounded).
        config: the env config (``num_worlds``, ``num_routers``, ``episode_len``, weights, ...).
        seed: the env seed, the same for every rule.
        steps: env steps per rule (default :func:`default_steps`).
        device: torch device of the envs.
        agent_names: names for the traffic shares (default ``agent_0``...).
        prompt_features: ``(tokens [P], layout)``: the obs holds the prompt features of a policy
            with ``layout.agent_prices`` (:class:`~env.prompt_env.PromptEnv`'s ``tokens``).

    Returns:
        ``{name: {"quality", "cost_usd_per_1k", "reward", "congestion", "requests", "share":
        {agent: fraction of requests}}}``; ``reward`` is per request,
        ``quality - cost_weight * cost_usd - congestion_weight * load``.
    """
    steps = steps or default_steps(config)
    k = quality.shape[1]
    names = list(agent_names or [f"agent_{i}" for i in range(k)])
    out: dict[str, dict[str, object]] = {}
    for name, route in rules.items():
        features = {}
        if prompt_features is not None and prompt_features[1].agent_prices is not None:
            tokens, layout = prompt_features
            features = {"tokens": tokens, "agent_prices": layout.agent_prices, "cost_scale_usd": layout.cost_scale_usd}
        env = PromptEnv(embeddings, quality, cost_usd, list(capacities), config, device=device, seed=seed,
                        **features)
        step = env.reset(seed=seed)
        q_sum = c_sum = g_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        counts = torch.zeros(k, dtype=torch.float64, device=env.device)
        for _ in range(steps):
            action = route(env, step).to(torch.long)
            step = env.step(action)
            q_sum = q_sum + step.quality.double().sum()
            c_sum = c_sum + step.cost_usd.double().sum()
            g_sum = g_sum + step.congestion.double().sum()
            counts += torch.bincount(action.reshape(-1), minlength=k).double()
        n = float(counts.sum())
        q, c, g = float(q_sum) / n, float(c_sum) / n, float(g_sum) / n
        out[name] = {
            "quality": q,
            "cost_usd_per_1k": c * 1000,
            "reward": q - config.cost_weight * c - config.congestion_weight * g,
            "congestion": g,
            "requests": int(n),
            "share": {a: float(x) / n for a, x in zip(names, counts.tolist(), strict=True)},
        }
    return out
