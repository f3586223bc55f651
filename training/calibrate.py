"""Calibration: the ``cost_weight`` at which a policy of every trade-off meets a cost or traffic
target on a dataset split, as RouteLLM calibrates its threshold (Ong et al. 2024, arXiv
2406.18665, sec. 5: a threshold for a given share of calls to the strong model).

The policy routes each prompt of the split greedily at zero load; the search is a bisection on
``log1p(cost_weight)`` for the smallest ``cost_weight`` whose mean cost (or the agent's share) is
within the target. Both figures fall as ``cost_weight`` rises for a policy with prompt features
(:class:`policy.networks.Actor`), so the bisection finds the boundary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from contract.errors import UserError
from env.dataset import RoutingDataset
from policy.artefact import Policy
from training.evaluation.offline import policy_choices, summarize

#: ``cost_weight`` (USD^-1) beyond which no target is searched.
MAX_COST_WEIGHT = 1e9


@dataclass(frozen=True)
class Calibration:
    """The calibrated ``cost_weight`` (USD^-1) and what the policy does there on the split:
    ``quality`` (mean, [0, 1]), ``cost_usd_per_1k`` and ``share`` (agent -> fraction of prompts)."""

    cost_weight: float
    quality: float
    cost_usd_per_1k: float
    share: dict[str, float]
    target: str
    prompts: int


def _figures(policy: Policy, split: RoutingDataset, embeddings: np.ndarray, tokens: np.ndarray,
             cost_weight: float) -> tuple[float, float, dict[str, float]]:
    choice = policy_choices(policy, embeddings, tokens, cost_weight=cost_weight)
    scores = summarize(choice, split.quality, split.cost_usd, 0.0)
    counts = np.bincount(choice, minlength=len(policy.agents)) / max(1, len(choice))
    return scores["quality"], scores["cost_usd_per_1k"], dict(zip(policy.agents, counts.tolist(), strict=True))


def calibrate(policy: Policy, split: RoutingDataset, embeddings: np.ndarray,
              target_cost_usd_per_1k: float | None = None, target_share: tuple[str, float] | None = None,
              iterations: int = 48) -> Calibration:
    """The smallest ``cost_weight`` at which ``policy`` meets one target on ``split``.

    Args:
        policy: a policy of every trade-off (``layout.cost_preference``).
        split: the prompts and outcomes to calibrate on (the validation split).
        embeddings: ``[P, E]`` float32 embeddings of ``split``.
        target_cost_usd_per_1k: mean cost at most this, USD per 1,000 requests; or
        target_share: ``(agent, p)``: at most the fraction ``p`` of prompts to ``agent``.
        iterations: bisection steps on ``log1p(cost_weight)`` over ``[0, MAX_COST_WEIGHT]``.

    Raises:
        UserError: not exactly one target, a policy of one cost weight, an unknown agent, an
            empty split, or a target that no ``cost_weight`` meets.
    """
    if (target_cost_usd_per_1k is None) == (target_share is None):
        raise UserError("give one target: --target-cost-usd-per-1k or --target-share AGENT=P")
    if not policy.layout.cost_preference:
        raise UserError(f"policy {policy.version} was trained at one cost weight; calibrate a policy trained "
                        "with env.cost_weight_range")
    if not len(split):
        raise UserError("the split to calibrate on has no prompts")
    if target_share is not None:
        agent, p = target_share
        if agent not in policy.agents:
            raise UserError(f"--target-share: unknown agent {agent!r}; the policy's agents: {', '.join(policy.agents)}")
        if not 0.0 <= p <= 1.0:
            raise UserError(f"--target-share: {p} is not a fraction in [0, 1]")
        label = f"share of {agent} <= {p:g}"
    else:
        if not target_cost_usd_per_1k > 0 or not math.isfinite(target_cost_usd_per_1k):
            raise UserError(f"--target-cost-usd-per-1k must be a positive number, not {target_cost_usd_per_1k}")
        label = f"cost <= {target_cost_usd_per_1k:g} USD per 1k requests"
    tokens = split.prompt_tokens

    def met(weight: float) -> bool:
        _, cost, share = _figures(policy, split, embeddings, tokens, weight)
        if target_share is not None:
            return share[target_share[0]] <= target_share[1] + 1e-12
        return cost <= target_cost_usd_per_1k * (1 + 1e-12)

    if met(0.0):
        weight = 0.0
    elif not met(MAX_COST_WEIGHT):
        quality, cost, share = _figures(policy, split, embeddings, tokens, MAX_COST_WEIGHT)
        raise UserError(f"no cost_weight meets '{label}': at cost_weight {MAX_COST_WEIGHT:g} the policy costs "
                        f"{cost:.4g} USD per 1k with shares "
                        + ", ".join(f"{a} {s:.3f}" for a, s in share.items()))
    else:
        lo, hi = 0.0, math.log1p(MAX_COST_WEIGHT)  # met(expm1(hi)) holds, met(expm1(lo)) does not
        for _ in range(iterations):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if met(math.expm1(mid)) else (mid, hi)
        weight = math.expm1(hi)
    quality, cost, share = _figures(policy, split, embeddings, tokens, weight)
    return Calibration(weight, quality, cost, share, label, len(split))
