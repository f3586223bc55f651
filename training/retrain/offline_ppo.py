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

from policy.networks import Actor, Critic
from training.batch import PPOBatch
from training.gae import generalized_advantage_estimate
from training.retrain.config import RetrainConfig
from training.retrain.trajectories import LoggedBatch
from training.trainer import explained_variance
from training.update import ppo_update
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
    """:func:`training.update.ppo_update` over ``batch`` (``cfg.ppo.update_epochs`` passes of
    ``cfg.ppo.num_minibatches`` clipped-PPO steps).

    Works for single-router policies (``N = 1``): the centralised critic's state is that router's
    obs ``[M, D]``.

    Args:
        actor, critic: networks to update in place (warm-started from the serving policy).
        value_norm: running moments of the value targets (updated with this batch's returns).
        optimizer: over both networks.
        batch: the logged trajectories (on the networks' device).
        cfg: ``cfg.ppo`` holds the PPO settings (``gae_lambda``, ``update_epochs``, ...).
        gamma: discount within a session.
        generator: orders the minibatches.

    Returns:
        Means over the minibatches of ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
        (against the logging policy) and ``clipfrac``; ``explained_variance`` of the serving
        critic; ``grad_steps``; ``early_stop`` (``ppo.target_kl``); ``reward_mean``.
    """
    m = len(batch)
    obs, mask, action = batch.obs, batch.action_mask, batch.action
    state = obs.reshape(m, -1)
    with torch.no_grad():
        value = value_norm.denormalize(critic(obs, state))  # [M, 1]
        next_value = torch.zeros_like(value)
        next_value[:-1] = value[1:]
        advantage, returns = generalized_advantage_estimate(
            batch.reward, value, next_value, batch.done, batch.done, gamma, cfg.ppo.gae_lambda)
    value_norm.update(returns)
    actor.train()
    critic.train()
    ppo_batch = PPOBatch(obs=obs, state=state, action_mask=mask, action=action, log_prob=batch.behaviour_log_prob,
                         advantage=advantage, returns=value_norm.normalize(returns), value=value_norm.normalize(value))
    result = ppo_update(actor, critic, optimizer, ppo_batch, cfg.ppo, generator).read()
    actor.eval()
    critic.eval()
    result["explained_variance"] = explained_variance(value.flatten(), returns.flatten())
    result["reward_mean"] = batch.reward.mean().item()
    return result
