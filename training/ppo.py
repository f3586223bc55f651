"""The clipped PPO loss (Schulman et al. 2017, arXiv 1707.06347, eq. 7 and 9)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PPOLoss:
    """Terms of the PPO loss for one minibatch (all scalars, float32).

    ``loss = policy_loss + vf_coef * value_loss - ent_coef * entropy``.
    """

    loss: torch.Tensor
    policy_loss: torch.Tensor
    value_loss: torch.Tensor
    entropy: torch.Tensor
    approx_kl: torch.Tensor
    clipfrac: torch.Tensor


def ppo_loss(
    new_log_prob: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    new_value: torch.Tensor,
    old_value: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    clip_coef: float,
    ent_coef: float,
    vf_coef: float,
    clip_vloss: bool = False,
) -> PPOLoss:
    """Clipped surrogate + value loss + entropy bonus, averaged over every element.

    Args:
        new_log_prob: ``[M]`` (any shape) log pi_theta(a|o) under the current parameters.
        old_log_prob: same shape, log-prob under the policy that collected the data.
        advantage: same shape, (normalised) advantages.
        new_value, old_value, returns: same shape, V_theta(s), V_old(s) and GAE returns.
        entropy: same shape, entropy of the current action distribution.
        clip_coef: epsilon of the ratio clip.
        ent_coef, vf_coef: weights of the entropy bonus and the value loss.
        clip_vloss: clip the value change to ``clip_coef`` around ``old_value`` (as in PPO2 /
            CleanRL; Engstrom et al. 2020 found it neutral at best).

    Returns:
        :class:`PPOLoss`; ``approx_kl`` is the low-variance estimator ``E[(r - 1) - log r]``
        (Schulman 2020, "Approximating KL divergence").
    """
    log_ratio = new_log_prob - old_log_prob
    ratio = log_ratio.exp()
    surrogate = torch.min(advantage * ratio, advantage * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    policy_loss = -surrogate.mean()
    if clip_vloss:
        clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        value_loss = 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
    else:
        value_loss = 0.5 * ((new_value - returns) ** 2).mean()
    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        ratio_m1 = ratio - 1
        approx_kl = (ratio_m1 - log_ratio).mean()
        clipfrac = (ratio_m1.abs() > clip_coef).float().mean()
    return PPOLoss(loss, policy_loss, value_loss, entropy_mean, approx_kl, clipfrac)
