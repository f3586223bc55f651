"""One PPO update: epochs of shuffled minibatches of the clipped loss, shared by the on-line
trainer and the retraining job.

Clipped PPO as in Schulman et al. 2017 (arXiv 1707.06347), loop after CleanRL's ``ppo.py``;
the ``target_kl`` early stop as in Stable-Baselines3's PPO.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

from training.batch import PPOBatch
from training.config import PPOConfig
from training.device_early_stop import DeviceKLStop, supports_device_stop
from training.distributed import all_reduce_mean
from training.ppo import PPOLoss, center_action_advantages, expected_ppo_loss, ppo_loss

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


class KLStop(Protocol):
    """Where an update's ``target_kl`` early stop is decided: on the host (:class:`HostKLStop`) or
    on the device (:class:`training.device_early_stop.DeviceKLStop`)."""

    stopped: bool

    def begin_epoch(self, generator: torch.Generator) -> None: ...
    def allows_step(self, approx_kl: torch.Tensor) -> bool: ...
    def stepped(self) -> None: ...
    def close(self) -> None: ...
    def metrics(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor | float]: ...
    def restore(self, generator: torch.Generator, values: dict[str, float]) -> None: ...


class HostKLStop:
    """The early stop of Stable-Baselines3's PPO: the update ends before the step of the first
    minibatch whose ``approx_kl`` (averaged over ranks) exceeds ``kl_limit`` (read back to the host
    once per minibatch); that minibatch's loss terms are still in the means. No limit: never."""

    def __init__(self, kl_limit: float | None) -> None:
        self.kl_limit, self.steps, self.stopped = kl_limit, 0, False

    def begin_epoch(self, generator: torch.Generator) -> None:
        """Nothing to do."""

    def allows_step(self, approx_kl: torch.Tensor) -> bool:
        if self.kl_limit is not None and all_reduce_mean(approx_kl) > self.kl_limit:  # host sync
            self.stopped = True
        return not self.stopped

    def stepped(self) -> None:
        self.steps += 1

    def close(self) -> None:
        """Nothing to do."""

    def metrics(self, stats: dict[str, list[torch.Tensor]]) -> dict[str, torch.Tensor | float]:
        out: dict[str, torch.Tensor | float] = {k: torch.stack(v).mean() for k, v in stats.items()}
        return out | {"grad_steps": self.steps, "early_stop": float(self.stopped)}

    def restore(self, generator: torch.Generator, values: dict[str, float]) -> None:
        """Nothing to do: the loop drew only the permutations it used."""


@dataclass
class PendingUpdate:
    """A :func:`ppo_update` whose figures are still on the device.

    ``metrics`` holds 0-d tensors: the means of :data:`LOSS_TERMS`, ``grad_steps`` and
    ``early_stop``. Read them with :meth:`read`, or together with other figures by
    :func:`read_scalars` and then :meth:`finish`.
    """

    metrics: dict[str, torch.Tensor | float]
    generator: torch.Generator
    kl_stop: KLStop

    def finish(self, values: dict[str, float]) -> dict[str, float]:
        """The update's result from the read ``metrics`` (and the minibatch generator where the
        host loop would have left it: :meth:`KLStop.restore`)."""
        self.kl_stop.restore(self.generator, values)
        result = {k: values[k] for k in LOSS_TERMS}
        result["grad_steps"] = int(values["grad_steps"])
        result["early_stop"] = float(values["early_stop"])
        return result

    def read(self) -> dict[str, float]:
        """:meth:`finish` of the metrics read now (one host sync)."""
        return self.finish(read_scalars(self.metrics)[0])


def minibatch_loss(actor: torch.nn.Module, critic: torch.nn.Module, batch: PPOBatch, idx: torch.Tensor,
                   ppo: PPOConfig, ent_coef: float) -> PPOLoss:
    """The clipped-PPO loss of the minibatch ``idx`` (``[m]`` int64) of ``batch``: a ``Categorical``
    over ``actor(obs, action_mask)`` logits, advantages normalised within the minibatch when
    ``ppo.norm_adv``, then :func:`training.ppo.ppo_loss`, or :func:`training.ppo.expected_ppo_loss`
    when the batch carries every action's advantage (``probs`` and ``action_advantage``)."""
    logits = actor(batch.obs[idx], batch.action_mask[idx])
    dist = torch.distributions.Categorical(logits=logits, validate_args=False)
    new_value = critic(batch.obs[idx], batch.state[idx])
    if batch.probs is not None and batch.action_advantage is not None:
        old = batch.probs[idx]
        adv = center_action_advantages(batch.action_advantage[idx], old, ppo.norm_adv)
        return expected_ppo_loss(dist.probs, old, adv, new_value, batch.value[idx], batch.returns[idx],
                                 dist.entropy(), ppo.clip_coef, ent_coef, ppo.vf_coef, ppo.clip_vloss)
    adv = batch.advantage[idx]
    if ppo.norm_adv and adv.numel() > 1:
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    return ppo_loss(dist.log_prob(batch.action[idx]), batch.log_prob[idx], adv, new_value, batch.value[idx],
                    batch.returns[idx], dist.entropy(), ppo.clip_coef, ent_coef, ppo.vf_coef, ppo.clip_vloss)


def ppo_update(
    actor: torch.nn.Module,
    critic: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batch: PPOBatch,
    ppo: PPOConfig,
    generator: torch.Generator,
    ent_coef: float | None = None,
) -> PendingUpdate:
    """``ppo.update_epochs`` passes of ``ppo.num_minibatches`` clipped-PPO steps over ``batch``.

    Each pass draws one permutation (:func:`minibatch_indices`). Per minibatch:
    :func:`minibatch_loss`, then zero_grad, backward, ``clip_grad_norm_`` (``ppo.max_grad_norm``)
    and ``optimizer.step()``. With ``ppo.target_kl`` set, the update stops before the step of the
    first minibatch whose ``approx_kl`` (averaged over ranks) exceeds ``1.5 * target_kl``; that
    minibatch's loss terms are still in the means. The stop is decided on the device when the
    optimizer allows it (:mod:`training.device_early_stop`), else on the host.

    Nothing is read back to the host here (but ``approx_kl`` by a host early stop): the figures
    come back by :meth:`PendingUpdate.read`, or the trainer's one read-back per iteration. The
    permutation is moved to the batch's device once per epoch when the generator lives elsewhere.

    Args:
        actor: ``(obs, action_mask) -> logits [m, N, K]`` (DDP-wrapped or not).
        critic: ``(obs, state) -> value [m, N]``, on the scale of ``batch.returns``.
        optimizer: steps the parameters of its groups, whose gradient norm is clipped together.
        batch: the samples (:class:`training.batch.PPOBatch`).
        ppo: ``clip_coef``, ``ent_coef``, ``vf_coef``, ``clip_vloss``, ``norm_adv``,
            ``max_grad_norm``, ``update_epochs``, ``num_minibatches``, ``target_kl`` are used.
        generator: orders the minibatches.
        ent_coef: overrides ``ppo.ent_coef`` (an annealed value).

    Returns:
        The pending update; read, it gives the means over the minibatches of ``policy_loss``,
        ``value_loss``, ``entropy``, ``approx_kl`` and ``clipfrac``, ``grad_steps`` (optimizer
        steps taken) and ``early_stop`` (1.0 when ``target_kl`` stopped the update, else 0.0).
    """
    ent_coef = ppo.ent_coef if ent_coef is None else ent_coef
    params = [p for group in optimizer.param_groups for p in group["params"]]
    stats: dict[str, list[torch.Tensor]] = {k: [] for k in LOSS_TERMS}
    kl_limit = None if ppo.target_kl is None else 1.5 * ppo.target_kl
    device = batch.obs.device
    kl_stop: KLStop = (DeviceKLStop(kl_limit, optimizer, device)
                       if kl_limit is not None and supports_device_stop(optimizer) else HostKLStop(kl_limit))
    try:
        for _ in range(ppo.update_epochs):
            chunks = minibatch_indices(len(batch), ppo.num_minibatches, generator)
            if chunks[0].device != device:  # one copy per epoch (same chunks: the same chunk count)
                chunks = torch.cat(chunks).to(device, non_blocking=True).chunk(ppo.num_minibatches)
            kl_stop.begin_epoch(generator)
            for idx in chunks:
                out = minibatch_loss(actor, critic, batch, idx, ppo, ent_coef)
                for k in stats:
                    stats[k].append(getattr(out, k).detach())
                if not kl_stop.allows_step(out.approx_kl):
                    break
                optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
                optimizer.step()
                kl_stop.stepped()
            if kl_stop.stopped:
                break
    finally:
        kl_stop.close()
    return PendingUpdate(kl_stop.metrics(stats), generator, kl_stop)
