"""One PPO update: epochs of shuffled minibatches of the clipped loss, shared by the on-line
trainer and the retraining job.

Clipped PPO as in Schulman et al. 2017 (arXiv 1707.06347), loop after CleanRL's ``ppo.py``;
the ``target_kl`` early stop as in Stable-Baselines3's PPO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch

from training.config import PPOConfig
from training.distributed import all_reduce_mean
from training.ppo import center_action_advantages, expected_ppo_loss, ppo_loss

LOSS_TERMS = ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")


def read_scalars(*groups: Mapping[str, torch.Tensor | float]) -> list[dict[str, float]]:
    """Every value of ``groups`` as a Python float, with one device-to-host copy for all the tensors.

    The training loop keeps its figures as 0-d tensors on the device and reads them here once per
    iteration: that ``tolist()`` is the iteration's one host sync. Tensors are read as float64
    (exact for float32, float64, bool and integers below 2**53); plain numbers pass through.
    """
    tensors = [v.detach().reshape(()).to(torch.float64) for g in groups for v in g.values()
               if isinstance(v, torch.Tensor)]
    read = iter(torch.stack(tensors).tolist() if tensors else [])
    return [{k: next(read) if isinstance(v, torch.Tensor) else float(v) for k, v in g.items()} for g in groups]


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


@dataclass
class PendingUpdate:
    """A :func:`ppo_update_on_device` whose figures are still on the device.

    ``metrics`` holds 0-d tensors: the means of :data:`LOSS_TERMS`, ``grad_steps`` and
    ``early_stop``. Read them with :meth:`read`, or together with other figures by
    :func:`read_scalars` and then :meth:`finish`.
    """

    metrics: dict[str, torch.Tensor | float]
    generator: torch.Generator
    #: the generator's state after each epoch's permutation (only with the on-device early stop)
    epoch_states: list[torch.Tensor] = field(default_factory=list)

    def finish(self, values: dict[str, float]) -> dict[str, float]:
        """The update's result from the read ``metrics``. After an on-device early stop the generator
        is set back to where the loop that stops on the host leaves it (it drew no permutation for
        the epochs after the stop), so the next update's minibatches are the same either way."""
        if self.epoch_states and values["early_stop"]:
            self.generator.set_state(self.epoch_states[int(values["epochs_drawn"]) - 1])
        result = {k: values[k] for k in LOSS_TERMS}
        result["grad_steps"] = int(values["grad_steps"])
        result["early_stop"] = float(values["early_stop"])
        return result

    def read(self) -> dict[str, float]:
        """:meth:`finish` of the metrics read now (one host sync)."""
        return self.finish(read_scalars(self.metrics)[0])


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

    This is :func:`ppo_update_on_device` followed by its one read-back; see there for where the
    host waits for the device.

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
    return ppo_update_on_device(actor, critic, optimizer, obs, state, action_mask, action, old_log_prob, advantage,
                                returns, old_value, ppo, generator, ent_coef, old_probs, action_advantage).read()


def ppo_update_on_device(
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
) -> PendingUpdate:
    """:func:`ppo_update` (same arguments and numerics) without reading anything back to the host.

    No minibatch step waits for the device: the loss terms stay 0-d tensors until
    :meth:`PendingUpdate.read` (or the trainer's one read-back per iteration). The permutation is
    moved to the data's device once per epoch when the generator lives elsewhere.

    The ``ppo.target_kl`` early stop is decided on the device when the optimizer can skip a step on
    a device flag (``_step_supports_amp_scaling``: fused Adam, as the trainer's, or fused SGD, the
    flag ``GradScaler`` uses): once a minibatch's ``approx_kl`` is over the limit, every further
    step is still computed but skipped by the optimizer (parameters, moments and step count
    unchanged), and the stopped minibatches are left out of the means; the result equals stopping
    on the host (the means up to float rounding). Any other optimizer stops on the host, which
    reads ``approx_kl`` back once per minibatch.
    """
    ent_coef = ppo.ent_coef if ent_coef is None else ent_coef
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in LOSS_TERMS}
    kl_limit = None if ppo.target_kl is None else 1.5 * ppo.target_kl
    on_device = kl_limit is not None and getattr(optimizer, "_step_supports_amp_scaling", False)
    pending = PendingUpdate({}, generator)
    device = obs.device
    # host early stop: Python counters; on-device early stop: flags and counts on the device
    steps, stopped = 0, False
    stop = torch.zeros((), dtype=torch.bool, device=device)  # an earlier minibatch was over the limit
    counted: list[torch.Tensor] = []  # 1.0 where a minibatch's loss terms are in the means
    step_count = torch.zeros((), dtype=torch.long, device=device)
    epochs_drawn = torch.zeros((), dtype=torch.long, device=device)
    try:
        for _ in range(ppo.update_epochs):
            chunks = minibatch_indices(obs.shape[0], ppo.num_minibatches, generator)
            if chunks[0].device != device:  # one copy per epoch (same chunks: the same chunk count)
                chunks = torch.cat(chunks).to(device, non_blocking=True).chunk(ppo.num_minibatches)
            if on_device:
                pending.epoch_states.append(generator.get_state())
                epochs_drawn += ~stop
            for idx in chunks:
                logits = actor(obs[idx], action_mask[idx])
                dist = torch.distributions.Categorical(logits=logits, validate_args=False)
                new_value = critic(obs[idx], state[idx])
                if old_probs is not None and action_advantage is not None:
                    old = old_probs[idx]
                    adv = center_action_advantages(action_advantage[idx], old, ppo.norm_adv)
                    out = expected_ppo_loss(dist.probs, old, adv, new_value, old_value[idx], returns[idx],
                                            dist.entropy(), ppo.clip_coef, ent_coef, ppo.vf_coef, ppo.clip_vloss)
                else:
                    adv = advantage[idx]
                    if ppo.norm_adv and adv.numel() > 1:
                        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                    out = ppo_loss(dist.log_prob(action[idx]), old_log_prob[idx], adv, new_value, old_value[idx],
                                   returns[idx], dist.entropy(), ppo.clip_coef, ent_coef, ppo.vf_coef,
                                   ppo.clip_vloss)
                for k in stats:
                    stats[k].append(getattr(out, k).detach())
                if on_device:
                    counted.append((~stop).float())
                    stop = stop | (all_reduce_mean(out.approx_kl) > kl_limit)
                    optimizer.found_inf = stop.float()  # 1.0: the fused step leaves everything as it was
                elif kl_limit is not None and all_reduce_mean(out.approx_kl) > kl_limit:  # host sync
                    stopped = True
                    break
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
                optimizer.step()
                if on_device:
                    step_count += ~stop
                else:
                    steps += 1
            if stopped:
                break
    finally:
        if on_device and hasattr(optimizer, "found_inf"):
            del optimizer.found_inf
    if on_device:
        weight = torch.stack(counted)
        pending.metrics = {k: (torch.stack(v) * weight).sum() / weight.sum() for k, v in stats.items()}
        pending.metrics |= {"grad_steps": step_count, "early_stop": stop, "epochs_drawn": epochs_drawn}
    else:
        pending.metrics = {k: torch.stack(v).mean() for k, v in stats.items()}
        pending.metrics |= {"grad_steps": steps, "early_stop": float(stopped)}
    return pending
