"""Offline evaluation of a routing policy against simple baselines on a dataset split.

Each prompt is routed once with every agent free (no queues): ``reward = quality - cost_weight *
cost_usd``. Figures per router: mean ``quality`` in [0, 1], ``cost_usd_per_1k`` (USD per 1,000
requests) and mean ``reward``.
"""

from __future__ import annotations

import numpy as np
import torch

from contract.observation import ObsLayout, build_obs
from env.dataset import RoutingDataset
from policy.artefact import Policy, router_probabilities
from policy.networks import Actor


def summarize(choice: np.ndarray, quality: np.ndarray, cost_usd: np.ndarray, cost_weight: float) -> dict[str, float]:
    """Metrics of routing prompt ``p`` to ``choice[p]``.

    Args:
        choice: ``[P]`` int agent index per prompt.
        quality, cost_usd: ``[P, K]`` float.
        cost_weight: reward per USD.
    """
    rows = np.arange(len(choice))
    q, c = quality[rows, choice], cost_usd[rows, choice]
    return {
        "quality": float(q.mean()),
        "cost_usd_per_1k": float(c.mean() * 1000),
        "reward": float((q - cost_weight * c).mean()),
    }


def baselines(train: RoutingDataset, split: RoutingDataset, cost_weight: float) -> dict[str, dict[str, float]]:
    """Random, best single agent, cheapest agent and oracle on ``split``.

    * ``random``: expectation under a uniform choice (exact, not sampled).
    * ``best_single``: the agent with the highest mean reward on ``train``.
    * ``cheapest``: the agent with the lowest mean cost on ``train``.
    * ``oracle``: per prompt the agent with the highest reward (ties: the cheaper one).
    """
    q, c = split.quality, split.cost_usd
    reward = q - cost_weight * c
    out: dict[str, dict[str, float]] = {
        "random": {
            "quality": float(q.mean()),
            "cost_usd_per_1k": float(c.mean() * 1000),
            "reward": float(reward.mean()),
        }
    }
    train_reward = train.quality - cost_weight * train.cost_usd
    best = int(np.argmax(train_reward.mean(0)))
    cheapest = int(np.argmin(train.cost_usd.mean(0)))
    n = len(split)
    out["best_single"] = summarize(np.full(n, best), q, c, cost_weight) | {"agent": split.agent_names[best]}
    out["cheapest"] = summarize(np.full(n, cheapest), q, c, cost_weight) | {"agent": split.agent_names[cheapest]}
    # lexicographic: max reward, then min cost
    oracle = np.lexsort((c, -reward), axis=-1)[:, 0] if n else np.zeros(0, dtype=np.int64)
    out["oracle"] = summarize(oracle, q, c, cost_weight)
    return out


def policy_choices(policy: Policy, embeddings: np.ndarray, tokens: np.ndarray | None = None,
                   batch_size: int = 4096, cost_weight: float | None = None) -> np.ndarray:
    """Greedy agent index ``[P]`` for prompts with embeddings ``[P, E]`` and token counts ``[P]``
    (needed by a policy that observes them, see :func:`contract.observation.build_obs`), at zero
    load (and at ``cost_weight`` for a policy trained for every trade-off; None: its default)."""
    return greedy_choices(policy.actor, policy.layout, embeddings, tokens, batch_size, cost_weight)


def greedy_choices(actor: Actor, layout: ObsLayout, embeddings: np.ndarray, tokens: np.ndarray | None = None,
                   batch_size: int = 4096, cost_weight: float | None = None) -> np.ndarray:
    """:func:`policy_choices` of an actor whose observations follow ``layout`` (router 0)."""
    probs = zero_load_probabilities(actor, layout, embeddings, tokens, batch_size, cost_weight)
    return probs.argmax(-1) if len(probs) else np.zeros(0, dtype=np.int64)


@torch.no_grad()
def zero_load_probabilities(actor: Actor, layout: ObsLayout, embeddings: np.ndarray,
                            tokens: np.ndarray | None = None, batch_size: int = 4096,
                            cost_weight: float | None = None) -> np.ndarray:
    """``[P, K]`` float32: router 0's distribution for prompts with embeddings ``[P, E]`` (and
    token counts ``[P]``) at zero load (and at ``cost_weight``, as :func:`policy_choices`)."""
    out = []
    device = next(actor.parameters()).device
    for start in range(0, len(embeddings), batch_size):
        emb = torch.as_tensor(embeddings[start:start + batch_size], dtype=torch.float32, device=device)
        tok = None if tokens is None else torch.as_tensor(np.asarray(tokens[start:start + batch_size]), device=device)
        obs = build_obs(layout, emb, torch.zeros(len(emb), layout.num_agents, device=device), router=0,
                        cost_weight=cost_weight, tokens=tok)
        out.append(router_probabilities(actor, layout, obs)[:, 0].cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, layout.num_agents), dtype=np.float32)


def evaluate(policy: Policy, train: RoutingDataset, split: RoutingDataset, embeddings: np.ndarray,
             cost_weight: float) -> dict[str, dict[str, float]]:
    """``{"policy": {...}, "random": {...}, "best_single": ..., "cheapest": ..., "oracle": ...}``."""
    choice = policy_choices(policy, embeddings, split.prompt_tokens)
    return {"policy": summarize(choice, split.quality, split.cost_usd, cost_weight)} | baselines(
        train, split, cost_weight
    )
