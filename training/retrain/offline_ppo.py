"""Clipped PPO on logged decisions, with the logging policy as the old policy.

The ratio is ``pi_theta(a|o) / mu(a|o)`` where ``mu`` is the probability with which the server
chose ``a`` (:attr:`~training.retrain.trajectories.LoggedBatch.behaviour_log_prob`): clipping it to
``[1 - clip_coef, 1 + clip_coef]`` keeps the candidate in a trust region around the policy that
logged the data, however many epochs run over the batch (Schulman et al. 2017, arXiv 1707.06347,
eq. 7; the same surrogate as the on-line trainer, :func:`training.ppo.ppo_loss`). Advantages are
GAE within each session (:func:`training.gae.generalized_advantage_estimate`) with the critic of
the serving policy as the baseline.
"""

from __future__ import annotations

import torch

from training.gae import generalized_advantage_estimate
from training.networks import Actor, Critic
from training.ppo import ppo_loss
from training.retrain.config import RetrainConfig
from training.retrain.trajectories import LoggedBatch
from training.trainer import explained_variance
from training.value_norm import ValueNorm


def logged_update(
    actor: Actor,
    critic: Critic,
    value_norm: ValueNorm,
    optimizer: torch.optim.Optimizer,
    batch: LoggedBatch,
    cfg: RetrainConfig,
    gamma: float,
    generator: torch.Generator,
) -> dict[str, float]:
    """``cfg.update_epochs`` passes of ``cfg.num_minibatches`` clipped-PPO steps over ``batch``.

    Works for single-router policies (``N = 1``): the centralised critic's state is that router's
    obs ``[M, D]``.

    Args:
        actor, critic: networks to update in place (warm-started from the serving policy).
        value_norm: running moments of the value targets (updated with this batch's returns).
        optimizer: over both networks.
        batch: the logged trajectories (on the networks' device).
        cfg: PPO settings (``update_epochs``, ``num_minibatches``, ``clip_coef``, ...).
        gamma: discount within a session.
        generator: orders the minibatches.

    Returns:
        Means over the minibatches of ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
        (against the logging policy) and ``clipfrac``; ``explained_variance`` of the serving
        critic; ``grad_steps``.
    """
    m = len(batch)
    obs, mask, action = batch.obs, batch.action_mask, batch.action
    state = obs.reshape(m, -1)
    with torch.no_grad():
        value = value_norm.denormalize(critic(obs, state))  # [M, 1]
        next_value = torch.zeros_like(value)
        next_value[:-1] = value[1:]
        advantage, returns = generalized_advantage_estimate(
            batch.reward, value, next_value, batch.done, batch.done, gamma, cfg.gae_lambda)
    value_norm.update(returns)
    returns_n, old_value_n = value_norm.normalize(returns), value_norm.normalize(value)
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in
                                            ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")}
    params = [*actor.parameters(), *critic.parameters()]
    size = max(1, -(-m // cfg.num_minibatches))
    steps = 0
    actor.train()
    critic.train()
    for _ in range(cfg.update_epochs):
        order = torch.randperm(m, generator=generator, device=generator.device).to(obs.device)
        for start in range(0, m, size):
            idx = order[start:start + size]
            dist = actor.distribution(obs[idx], mask[idx])
            adv = advantage[idx]
            if adv.numel() > 1:
                adv = (adv - adv.mean()) / (adv.std() + 1e-8)
            out = ppo_loss(dist.log_prob(action[idx]), batch.behaviour_log_prob[idx], adv,
                           critic(obs[idx], state[idx]), old_value_n[idx], returns_n[idx], dist.entropy(),
                           cfg.clip_coef, cfg.ent_coef, cfg.vf_coef)
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            optimizer.step()
            steps += 1
            for k in stats:
                stats[k].append(getattr(out, k).detach())
    actor.eval()
    critic.eval()
    result = {k: torch.stack(v).mean().item() for k, v in stats.items()}
    result["explained_variance"] = explained_variance(value.flatten(), returns.flatten())
    result["grad_steps"] = steps
    result["reward_mean"] = batch.reward.mean().item()
    return result
