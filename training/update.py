"""One PPO update: epochs of shuffled minibatches of the clipped loss, shared by the on-line
trainer and the retraining job.

Clipped PPO as in Schulman et al. 2017 (arXiv 1707.06347), loop after CleanRL's ``ppo.py``;
the ``target_kl`` early stop as in Stable-Baselines3's PPO.
"""

from __future__ import annotations

import torch

from training.config import PPOConfig
from training.distributed import all_reduce_mean
from training.ppo import center_action_advantages, expected_ppo_loss, ppo_loss

LOSS_TERMS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")


def make_optimizer(actor: torch.nn.Module, critic: torch.nn.Module, ppo: PPOConfig,
                   fused: bool = False) -> torch.optim.Adam:
    """Adam (eps 1e-5, as in CleanRL) with two parameter groups: the actor at ``ppo.lr``, the critic
    at ``ppo.critic_lr`` (``lr`` when unset)."""
    return torch.optim.Adam([{"params": list(actor.parameters()), "lr": ppo.lr},
                             {"params": list(critic.parameters()), "lr": ppo.critic_lr or ppo.lr}],
                            lr=ppo.lr, eps=1e-5, fused=fused)


def set_learning_rates(optimizer: torch.optim.Optimizer, ppo: PPOConfig, factor: float = 1.0) -> tuple[float, float]:
    """Set the actor's and the critic's learning rates of :func:`make_optimizer`'s optimizer to
    ``factor`` times their configured values; returns ``(actor_lr, critic_lr)``."""
    rates = (ppo.lr * factor, (ppo.critic_lr or ppo.lr) * factor)
    for group, lr in zip(optimizer.param_groups, rates, strict=True):
        group["lr"] = lr
    return rates


def minibatch_indices(num_samples: int, num_minibatches: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A random permutation of ``range(num_samples)`` in ``num_minibatches`` chunks of
    ``ceil(num_samples / num_minibatches)`` (the last may be smaller; fewer chunks when
    ``num_samples < num_minibatches``), on the generator's device."""
    return torch.randperm(num_samples, generator=generator, device=generator.device).chunk(num_minibatches)


def ppo_update(
    actor: torch.nn.Module,
    critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    obs: torch.Tensor,
    state: torch.Tensor,
    action_mask: torch.Tensor,
    action: torch.Tensor,
    old_log_prob: torch.Tensor,
    advantage: torch.Tensor,
    returns: torch.Tensor,
    old_value: torch.Tensor,
    ppo: PPOConfig,
    generator: torch.Generator,
    ent_coef: float | None = None,
    old_probs: torch.Tensor | None = None,
    action_advantage: torch.Tensor | None = None,
) -> dict[str, float]:
    """``ppo.update_epochs`` passes of ``ppo.num_minibatches`` clipped-PPO steps over ``M`` samples.

    Each pass draws one permutation (:func:`minibatch_indices`). Per minibatch: a ``Categorical``
    over ``actor(obs, action_mask)`` logits, advantages normalised within the minibatch when
    ``ppo.norm_adv``, :func:`training.ppo.ppo_loss`, then zero_grad, backward,
    ``clip_grad_norm_`` (``ppo.max_grad_norm``) and ``optimizer.step()``. With ``ppo.target_kl``
    set, the update stops before the step of the first minibatch whose ``approx_kl`` (averaged over
    ranks) exceeds ``1.5 * target_kl``; that minibatch's loss terms are still in the means.

    Args:
        actor: ``(obs, action_mask) -> logits [M', N, K]`` (DDP-wrapped or not).
        critic: ``(obs, state) -> value [M', N]``, on the normalised scale.
        optimizer: steps the parameters of its groups, whose gradient norm is clipped together.
        obs: ``[M, N, D]`` float32. state: ``[M, S]`` float32. action_mask: ``[M, N, K]`` bool.
        action: ``[M, N]`` int64. old_log_prob: ``[M, N]`` float32, log-prob under the old policy.
        advantage: ``[M, N]`` float32. returns, old_value: ``[M, N]`` float32, normalised.
        ppo: ``clip_coef``, ``ent_coef``, ``vf_coef``, ``clip_vloss``, ``norm_adv``,
            ``max_grad_norm``, ``update_epochs``, ``num_minibatches``, ``target_kl`` are used.
        generator: orders the minibatches.
        ent_coef: overrides ``ppo.ent_coef`` (an annealed value).
        old_probs, action_advantage: ``[M, N, K]`` float32, the old policy and every action's
            advantage: given both, the loss is :func:`training.ppo.expected_ppo_loss` (advantages
            centred and normalised by :func:`training.ppo.center_action_advantages`) instead of the
            sampled one; ``action``, ``old_log_prob`` and ``advantage`` are then unused.

    Returns:
        Means over the minibatches of ``policy_loss``, ``value_loss``, ``entropy``, ``approx_kl``
        and ``clipfrac``; ``grad_steps`` (optimizer steps taken) and ``early_stop`` (1.0 when
        ``target_kl`` stopped the update, else 0.0).
    """
    ent_coef = ppo.ent_coef if ent_coef is None else ent_coef
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in LOSS_TERMS}
    steps, stopped = 0, False
    for _ in range(ppo.update_epochs):
        for idx in minibatch_indices(obs.shape[0], ppo.num_minibatches, generator):
            idx = idx.to(obs.device)
            logits = actor(obs[idx], action_mask[idx])
            dist = torch.distributions.Categorical(logits=logits, validate_args=False)
            new_value = critic(obs[idx], state[idx])
            if old_probs is not None and action_advantage is not None:
                old = old_probs[idx]
                adv = center_action_advantages(action_advantage[idx], old, ppo.norm_adv)
                out = expected_ppo_loss(dist.probs, old, adv, new_value, old_value[idx], returns[idx], dist.entropy(),
                                        ppo.clip_coef, ent_coef, ppo.vf_coef, ppo.clip_vloss)
            else:
                adv = advantage[idx]
                if ppo.norm_adv and adv.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                out = ppo_loss(dist.log_prob(action[idx]), old_log_prob[idx], adv, new_value, old_value[idx],
                               returns[idx], dist.entropy(), ppo.clip_coef, ent_coef, ppo.vf_coef, ppo.clip_vloss)
            for k in stats:
                stats[k].append(getattr(out, k).detach())
            if ppo.target_kl is not None and all_reduce_mean(out.approx_kl) > 1.5 * ppo.target_kl:
                stopped = True
                break
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
            optimizer.step()
            steps += 1
        if stopped:
            break
    result: dict[str, float] = {k: torch.stack(v).mean().item() for k, v in stats.items()}
    result["grad_steps"] = steps
    result["early_stop"] = float(stopped)
    return result
