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


def _value_loss(new_value: torch.Tensor, old_value: torch.Tensor, returns: torch.Tensor, clip_coef: float,
                clip_vloss: bool) -> torch.Tensor:
    if clip_vloss:
        clipped = old_value + (new_value - old_value).clamp(-clip_coef, clip_coef)
        return 0.5 * torch.max((new_value - returns) ** 2, (clipped - returns) ** 2).mean()
    return 0.5 * ((new_value - returns) ** 2).mean()


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
    value_loss = _value_loss(new_value, old_value, returns, clip_coef, clip_vloss)
    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        ratio_m1 = ratio - 1
        approx_kl = (ratio_m1 - log_ratio).mean()
        clipfrac = (ratio_m1.abs() > clip_coef).float().mean()
    return PPOLoss(loss, policy_loss, value_loss, entropy_mean, approx_kl, clipfrac)


def expected_ppo_loss(
    new_probs: torch.Tensor,
    old_probs: torch.Tensor,
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
    """The clipped surrogate in expectation over every action instead of the one taken.

    ``surrogate = sum_k min(pi_theta(k) A_k, clip(pi_theta(k), (1 -+ clip_coef) pi_old(k)) A_k)``,
    i.e. ``E_{k ~ pi_old}[min(r_k A_k, clip(r_k) A_k)]`` with ``r_k = pi_theta(k) / pi_old(k)``: the
    expectation over actions of :func:`ppo_loss`'s surrogate, so its gradient at ``theta_old`` is
    ``sum_k grad pi(k) A_k``, the expected value of the sampled estimator's ``grad log pi(a) A_a``
    (Mean Actor-Critic, Allen et al. 2017, arXiv 1709.00503, eq. 4). Masked actions have
    ``pi = 0`` and add nothing.

    Args:
        new_probs, old_probs: ``[M, N, K]`` float32, the current and the collecting policy.
        advantage: ``[M, N, K]`` float32, the (normalised) advantage of every action.
        new_value, old_value, returns, entropy: ``[M, N]``, as for :func:`ppo_loss`.
        clip_coef, ent_coef, vf_coef, clip_vloss: as for :func:`ppo_loss`.

    Returns:
        :class:`PPOLoss`; ``approx_kl`` is the exact ``KL(pi_old || pi_theta)`` and ``clipfrac`` the
        ``pi_old``-weighted share of actions whose ratio left the clip range.
    """
    low, high = old_probs * (1 - clip_coef), old_probs * (1 + clip_coef)
    clipped = torch.minimum(torch.maximum(new_probs, low), high)
    surrogate = torch.minimum(new_probs * advantage, clipped * advantage).sum(-1)
    policy_loss = -surrogate.mean()
    value_loss = _value_loss(new_value, old_value, returns, clip_coef, clip_vloss)
    entropy_mean = entropy.mean()
    loss = policy_loss + vf_coef * value_loss - ent_coef * entropy_mean
    with torch.no_grad():
        tiny = torch.finfo(old_probs.dtype).tiny
        kl = old_probs * (torch.log(old_probs.clamp_min(tiny)) - torch.log(new_probs.clamp_min(tiny)))
        approx_kl = kl.sum(-1).mean()
        moved = (new_probs - old_probs).abs() > clip_coef * old_probs
        clipfrac = (old_probs * moved).sum(-1).mean()
    return PPOLoss(loss, policy_loss, value_loss, entropy_mean, approx_kl, clipfrac)


def center_action_advantages(advantage: torch.Tensor, probs: torch.Tensor, normalize: bool) -> torch.Tensor:
    """``A_k - sum_j pi(j) A_j`` (a state baseline, which leaves the expected gradient unchanged),
    divided by its ``pi``-weighted standard deviation over the batch when ``normalize``.

    Args:
        advantage: ``[M, N, K]`` float32. probs: ``[M, N, K]`` float32, the collecting policy.
    """
    centered = advantage - (probs * advantage).sum(-1, keepdim=True)
    if not normalize:
        return centered
    scale = (probs * centered**2).sum(-1).mean().sqrt()
    return centered / (scale + 1e-8)
