"""Change detection: has an agent's reward moved away from what its history says?

A round tests each agent's new feedback against the reward critic fitted on that agent's earlier
records. The new records' mean residual ``r - Q̂_history(x)`` is compared with the earlier records'
own (a two-sample test, so the critic's shrinkage towards its prior, which biases both alike, is
not taken for a change). If the difference is far from 0 in standard errors
(``|z| >= z_threshold``) and in reward units (``|shift| >= min_shift``), the agent's world changed:
its history before the new records stops counting for the critic (:attr:`PolicyMeta.history_since
<contract.policy_meta.PolicyMeta>`), so the critic, and the actor after it, learn the changed agent
from what it does now, and its widened posterior brings exploration back to it. An agent whose
feedback does not move keeps all of its history: a stationary world loses no data, unlike a fixed
forgetting horizon (:func:`training.retrain.learner.recency_weights`), which forgets all the time.

This is the detect-and-restart scheme of change-detection bandits: a two-sample test of the recent
rewards against the earlier ones, and the arm's statistics reset when it fires (Liu, Lee and Shroff
2018, "A Change-Detection based Framework for Piecewise-stationary Multi-Armed Bandit Problem",
AAAI, arXiv 1711.03539; Cao, Wen, Kveton and Xie 2019, "Nearly Optimal Adaptive Procedure with
Change Detection for Piecewise-Stationary Bandit", AISTATS, arXiv 1802.03692), with the residuals
of the contextual critic in place of raw rewards, so a change of the prompts an agent is sent is not
taken for a change of the agent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from policy.networks import RewardCritic
from training.retrain.learner import fit_reward_critic


@dataclass(frozen=True)
class ChangeTest:
    """One agent's test.

    Attributes:
        agent: its index. records: its new records tested. shift: their mean residual minus its
        earlier records' (reward units; negative: worse than its history says). z: ``shift`` in
        standard errors (Welch's).
        changed: the test fired.
    """

    agent: int
    records: int
    shift: float
    z: float
    changed: bool


@torch.no_grad()
def detect_changes(critic: RewardCritic, obs: torch.Tensor, action: torch.Tensor, reward: torch.Tensor,
                 fresh: torch.Tensor, weight: torch.Tensor | None, ridge: float, prior: list[float | None],
                 z_threshold: float, min_shift: float, min_records: int,
                 outcome: tuple[torch.Tensor, torch.Tensor] | None = None,
                 shared: bool = False) -> list[ChangeTest]:
    """Test every agent's ``fresh`` records against the critic fitted on the rest.

    Args:
        critic: a reward critic of the policy's shape (a scratch copy: it is refitted in place).
        obs: ``[M, 1, D]`` float32; action: ``[M, 1]`` int64; reward: ``[M, 1]`` float32.
        fresh: ``[M]`` bool, the round's new records (the ones tested).
        weight: ``[M]`` the records' weights (0: not part of the agent's history any more); None: 1.
        ridge, prior, shared: as :func:`~training.retrain.learner.fit_reward_critic`.
        z_threshold: ``|z|`` at or above which a shift is a change.
        min_shift: ``|shift|`` (reward units) below which no shift is a change.
        min_records: an agent with fewer fresh or fewer earlier records is not tested.
        outcome: ``([M, 1] quality, [M, 1] cost_usd)``, what a preference critic is fitted on.

    Returns:
        One :class:`ChangeTest` per tested agent.
    """
    a = action.reshape(-1)
    w = torch.ones(len(a), dtype=torch.float64) if weight is None else weight.reshape(-1).double()
    history = (~fresh) & (w > 0)
    fit_reward_critic(critic, obs, action, reward, ridge, prior, sample_weight=w * history.double(), outcome=outcome,
                      shared=shared)
    residual = reward.reshape(-1).double() - critic(obs).reshape(len(a), -1).gather(1, a[:, None]).reshape(-1).double()
    tests = []
    for k in range(critic.weight.shape[0]):
        new, old = fresh & (a == k), history & (a == k)
        n, m = int(new.sum()), int(old.sum())
        if n < min_records or m < min_records:
            continue
        e_new, e_old = residual[new], residual[old]
        shift = float(e_new.mean() - e_old.mean())
        se = math.sqrt(float(e_new.var()) / n + float(e_old.var()) / m)
        z = shift / se if se > 0 else (math.inf if shift else 0.0)
        tests.append(ChangeTest(k, n, shift, z, abs(z) >= z_threshold and abs(shift) >= min_shift))
    return tests
