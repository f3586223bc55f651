"""The MAPPO training loop: collect a rollout on device, GAE, clipped-PPO minibatch epochs.

MAPPO as in Yu et al. 2021, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games",
arXiv 2103.01955 (centralised critic, decentralised actors); IPPO (local critic) by
``network.centralised_critic = false``. Loop structure after CleanRL's ``ppo.py``
(Huang et al. 2022, JMLR 23(274)).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from env.base import MultiAgentEnv
from training.buffer import RolloutBuffer
from training.config import TrainConfig
from training.networks import Actor, Critic
from training.ppo import ppo_loss


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var(target - pred) / Var(target)``; NaN when the target is constant."""
    var = target.var()
    return float("nan") if var == 0 else float(1 - (target - pred).var() / var)


class MAPPOTrainer:
    """Trains a router policy on a :class:`~env.prompt_env.PromptEnv` or any :class:`~env.base.MultiAgentEnv`.

    Args:
        config: the whole :class:`~training.config.TrainConfig` (``network`` and ``ppo`` are used).
        env: the environment; its device is the training device.

    Attributes:
        actor, critic: the networks being trained.
        optimizer: Adam over both (eps 1e-5, as in CleanRL).
        history: one dict of metrics per iteration.
    """

    def __init__(self, config: TrainConfig, env: MultiAgentEnv) -> None:
        self.config, self.env = config, env
        self.device = env.device
        net, ppo = config.network, config.ppo
        N, D, K = env.num_routers, env.obs_dim, env.num_actions
        self.actor = Actor(D, N, K, net.share_params, net.hidden).to(self.device)
        self.critic = Critic(D, env.state_dim, N, net.centralised_critic, net.share_params, net.hidden).to(self.device)
        self.optimizer = torch.optim.Adam(
            [*self.actor.parameters(), *self.critic.parameters()], lr=ppo.lr, eps=1e-5
        )
        self.buffer = RolloutBuffer(ppo.rollout_len, env.num_worlds, N, D, env.state_dim, K, self.device)
        self.num_iterations = max(1, ppo.total_steps // ppo.rollout_len)
        self.iteration = 0
        self.env_steps = 0
        self._gen = torch.Generator(device=self.device).manual_seed(config.seed)
        self._next = env.reset(seed=config.seed)
        self._episode_return = torch.zeros(env.num_worlds, device=self.device)
        self.history: list[dict[str, Any]] = []

    @torch.no_grad()
    def collect(self) -> dict[str, float]:
        """Fill the buffer with ``rollout_len`` steps of every world (no host sync per step)."""
        buf, env = self.buffer, self.env
        finished_sum = torch.zeros((), device=self.device)
        finished_n = torch.zeros((), device=self.device)
        info_sum: dict[str, torch.Tensor] = {}
        cur = self._next
        for t in range(buf.T):
            dist = self.actor.distribution(cur.obs, cur.action_mask)
            action = dist.sample()
            value = self.critic(cur.obs, cur.state)
            nxt = env.step(action)
            next_value = self.critic(nxt.final_obs, nxt.final_state)
            buf.add(t, obs=cur.obs, state=cur.state, action_mask=cur.action_mask, action=action,
                    log_prob=dist.log_prob(action), reward=nxt.reward, value=value, next_value=next_value,
                    terminated=nxt.terminated, truncated=nxt.truncated)
            self._episode_return += nxt.reward.mean(-1)
            done = nxt.done
            finished_sum += (self._episode_return * done).sum()
            finished_n += done.sum()
            self._episode_return *= ~done
            for k, v in nxt.metrics().items():
                info_sum[k] = info_sum.get(k, 0) + v.float().mean()
            cur = nxt
        self._next = cur
        self.env_steps += buf.T
        n = finished_n.item()
        return {
            "episode_reward": finished_sum.item() / n if n else float("nan"),
            "reward": buf.reward.mean().item(),
        } | {k: v.item() / buf.T for k, v in info_sum.items()}

    def update(self) -> dict[str, float]:
        """GAE, then ``update_epochs`` passes of ``num_minibatches`` clipped-PPO steps."""
        ppo, buf = self.config.ppo, self.buffer
        buf.compute_advantages(ppo.gamma, ppo.gae_lambda)
        obs, state, mask = buf.flat("obs"), buf.flat("state"), buf.flat("action_mask")
        action, old_log_prob = buf.flat("action"), buf.flat("log_prob")
        advantage, returns, old_value = buf.flat("advantage"), buf.flat("returns"), buf.flat("value")
        stats: dict[str, list[torch.Tensor]] = {k: [] for k in
                                                ("policy_loss", "value_loss", "entropy", "approx_kl", "clipfrac")}
        params = [*self.actor.parameters(), *self.critic.parameters()]
        for _ in range(ppo.update_epochs):
            for idx in buf.minibatch_indices(ppo.num_minibatches, self._gen):
                dist = self.actor.distribution(obs[idx], mask[idx])
                new_log_prob = dist.log_prob(action[idx])
                adv = advantage[idx]
                if ppo.norm_adv and adv.numel() > 1:
                    adv = (adv - adv.mean()) / (adv.std() + 1e-8)
                out = ppo_loss(new_log_prob, old_log_prob[idx], adv, self.critic(obs[idx], state[idx]),
                               old_value[idx], returns[idx], dist.entropy(), ppo.clip_coef, ppo.ent_coef,
                               ppo.vf_coef, ppo.clip_vloss)
                self.optimizer.zero_grad(set_to_none=True)
                out.loss.backward()
                torch.nn.utils.clip_grad_norm_(params, ppo.max_grad_norm)
                self.optimizer.step()
                for k in stats:
                    stats[k].append(getattr(out, k).detach())
        result = {k: torch.stack(v).mean().item() for k, v in stats.items()}
        result["explained_variance"] = explained_variance(buf.value.flatten(), buf.returns.flatten())
        return result

    def train(self, on_iteration: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the remaining iterations; returns the metrics history.

        ``on_iteration`` is called with each iteration's metrics (progress bars, files).
        """
        ppo = self.config.ppo
        agent_steps_per_iter = ppo.rollout_len * self.env.num_worlds * self.env.num_routers
        while self.iteration < self.num_iterations:
            if ppo.anneal_lr:
                frac = 1.0 - self.iteration / self.num_iterations
                for group in self.optimizer.param_groups:
                    group["lr"] = frac * ppo.lr
            start = time.perf_counter()
            metrics = self.collect()
            collect_s = time.perf_counter() - start
            metrics |= self.update()
            elapsed = time.perf_counter() - start
            self.iteration += 1
            metrics |= {
                "iteration": self.iteration,
                "env_steps": self.env_steps,
                "agent_steps": self.iteration * agent_steps_per_iter,
                "lr": self.optimizer.param_groups[0]["lr"],
                "collect_agent_steps_per_s": agent_steps_per_iter / max(collect_s, 1e-9),
                "iteration_s": elapsed,
            }
            self.history.append(metrics)
            if on_iteration is not None:
                on_iteration(metrics)
        return self.history
