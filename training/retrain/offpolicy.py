"""Off-policy value of a greedy policy on logged decisions, and the gate's verdict from it.

For each held-out logged decision ``i`` (obs ``x_i``, action ``a_i`` chosen with propensity
``p_i``, reward ``r_i``) and a target policy that routes greedily, ``π(a | x) = 1[a = argmax]``:

* importance weight ``w_i = π(a_i | x_i) / p_i``; effective sample size ``(Σ w)² / Σ w²``;
* self-normalised importance sampling, ``SNIPS = Σ w_i r_i / Σ w_i``;
* doubly robust, ``DR = mean_i [Q̂(x_i, π(x_i)) + w_i (r_i - Q̂(x_i, a_i))]`` (Dudík, Langford and
  Li 2011, arXiv 1103.4601, eq. 3) with the policy's own reward critic ``Q̂`` as the reward model
  (a policy without one uses its state value ``V̂``, one value for every action): unbiased
  whatever the model when the propensities are right, with less variance the better it predicts
  the reward.

The candidate and the serving policy are scored on the same decisions, so their difference is a
mean of paired per-decision terms; its confidence interval is the normal one,
``mean ± z · sd / sqrt(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import torch

from policy.artefact import Policy
from training.retrain.trajectories import LoggedBatch
from training.value_norm import ValueNorm


@dataclass(frozen=True)
class OffPolicyTerms:
    """Per-decision figures of one target policy on a logged batch of ``M`` decisions.

    Attributes:
        weight: ``[M]`` float64, ``π(a_i | x_i) / p_i``.
        dr: ``[M]`` float64, the doubly robust terms ``V̂(x_i) + w_i (r_i - V̂(x_i))``.
        reward: ``[M]`` float64, ``r_i``.
    """

    weight: torch.Tensor
    dr: torch.Tensor
    reward: torch.Tensor

    def summary(self) -> dict[str, float]:
        """``{"snips", "dr", "ess", "matched"}``: the two estimates, the effective sample size and
        the share of decisions where the policy would have chosen the logged agent."""
        w = self.weight
        total = float(w.sum())
        return {"snips": float((w * self.reward).sum()) / total if total > 0 else math.nan,
                "dr": float(self.dr.mean()) if len(self.dr) else math.nan,
                "ess": total**2 / float((w**2).sum()) if total > 0 else 0.0,
                "matched": float((w > 0).double().mean()) if len(w) else 0.0}


@torch.no_grad()
def off_policy_terms(policy: Policy, value_norm: ValueNorm | None, batch: LoggedBatch) -> OffPolicyTerms:
    """:class:`OffPolicyTerms` of ``policy`` routing greedily (masked as logged) on ``batch``.

    The reward model is ``policy``'s reward critic when it has one; otherwise its critic ``V̂``,
    denormalised with ``value_norm`` (required then).
    """
    m = len(batch)
    probs = policy.probabilities(batch.obs, batch.action_mask)  # [M, 1, K]
    greedy = probs.argmax(-1)  # [M, 1]
    chosen = (greedy == batch.action).double().reshape(m)
    weight = chosen / batch.propensity.double().reshape(m)
    reward = batch.reward.double().reshape(m)
    if policy.reward_critic is not None:
        q = policy.estimated_rewards(batch.obs).double()  # [M, 1, K]
        q_target = q.gather(-1, greedy.unsqueeze(-1)).reshape(m)
        q_logged = q.gather(-1, batch.action.unsqueeze(-1)).reshape(m)
        return OffPolicyTerms(weight=weight, dr=q_target + weight * (reward - q_logged), reward=reward)
    assert value_norm is not None, "a policy without a reward critic needs its value normaliser"
    value = value_norm.denormalize(policy.critic(batch.obs, batch.obs.reshape(m, -1))).double().reshape(m)
    return OffPolicyTerms(weight=weight, dr=value + weight * (reward - value), reward=reward)


def logged_verdict(candidate: OffPolicyTerms, serving: OffPolicyTerms, min_ess: float,
                   confidence: float, margin: float = 0.0) -> dict[str, Any]:
    """The logged-data half of the gate.

    Args:
        margin: the non-inferiority margin (reward units): ``worse`` needs the whole interval below
            ``-margin``, so two policies that decide alike but for a difference nobody would notice
            (a tight interval around -0.0005) are not told apart.

    Returns:
        ``{"decisions", "candidate": summary, "serving": summary, "difference": {"dr", "ci"},
        "confidence", "min_ess", "margin", "verdict"}``; ``verdict`` is ``too_few`` (either
        effective sample size below ``min_ess``), ``better`` (the interval of candidate - serving
        lies above 0), ``worse`` (below ``-margin``) or ``inconclusive``.
    """
    n = len(candidate.dr)
    out: dict[str, Any] = {"decisions": n, "candidate": candidate.summary(), "serving": serving.summary(),
                           "confidence": confidence, "min_ess": min_ess, "margin": margin}
    diff = candidate.dr - serving.dr
    mean = float(diff.mean()) if n else math.nan
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    half = z * float(diff.std(unbiased=True)) / math.sqrt(n) if n > 1 else math.inf
    out["difference"] = {"dr": mean, "ci": [mean - half, mean + half]}
    if min(out["candidate"]["ess"], out["serving"]["ess"]) < min_ess:
        out["verdict"] = "too_few"
    elif mean - half > 0:
        out["verdict"] = "better"
    elif mean + half < -margin:
        out["verdict"] = "worse"
    else:
        out["verdict"] = "inconclusive"
    return out
