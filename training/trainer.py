"""The MAPPO training loop: collect a rollout on device, GAE, clipped-PPO minibatch epochs.

MAPPO as in Yu et al. 2021, "The Surprising Effectiveness of PPO in Cooperative Multi-Agent Games",
arXiv 2103.01955 (centralised critic, decentralised actors); IPPO (local critic) by
``network.centralised_critic = false``. Loop structure after CleanRL's ``ppo.py``
(Huang et al. 2022, JMLR 23(274)).

Host syncs: no step of the collection (policy forward, env step, buffer write) and no minibatch
step of the update reads anything back from the device. Every figure of an iteration is kept as a
0-d tensor on the device and read back by one ``tolist()`` at its end
(:func:`training.update.read_scalars`), the iteration's one sync.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from env.base import MultiAgentEnv, MultiAgentStep
from policy.networks import NetworkShape, build_networks
from training.buffer import RolloutBuffer
from training.config import TrainConfig
from training.distributed import is_distributed
from training.update import PendingUpdate, make_optimizer, ppo_update, read_scalars, set_learning_rates
from training.value_norm import ValueNorm


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU and CUDA)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def explained_variance(pred: torch.Tensor, target: torch.Tensor) -> float:
    """``1 - Var(target - pred) / Var(target)``; NaN when the target is constant."""
    return float(explained_variance_tensor(pred, target))


def explained_variance_tensor(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """:func:`explained_variance` as a 0-d tensor on the device (no host sync)."""
    var = target.var()
    return torch.where(var == 0, torch.nan, 1 - (target - pred).var() / var)


class MAPPOTrainer:
    """Trains a router policy on a :class:`~env.prompt_env.PromptEnv` or any :class:`~env.base.MultiAgentEnv`.

    Args:
        config: the whole :class:`~training.config.TrainConfig` (``seed``, ``compile``, ``network``
            and ``ppo`` are used).
        env: the environment; its device is the training device. Under ``torchrun`` each rank
            passes its own share of the worlds; gradients are averaged by DDP.

    Attributes:
        actor, critic: the networks being trained (unwrapped, also under DDP).
        value_norm: :class:`~training.value_norm.ValueNorm` of the value targets.
        optimizer: Adam over both networks (eps 1e-5, as in CleanRL; the fused kernel).
        iteration: iterations done; ``num_iterations`` in all (``total_steps // rollout_len``).
        history: one dict of metrics per iteration run by this object.
    """

    def __init__(self, config: TrainConfig, env: MultiAgentEnv) -> None:
        self.config, self.env = config, env
        self.device = env.device
        net, ppo = config.network, config.ppo
        N, D, K = env.num_routers, env.obs_dim, env.num_actions
        layout = getattr(env, "layout", None)  # PromptEnv's ObsLayout; other envs have none
        columns, penalty = (layout.actor_columns(), layout.penalty_cols) if layout is not None else (None, None)
        actor, critic = build_networks(net, NetworkShape(D, env.state_dim, N, K, columns, penalty))
        self.actor, self.critic = actor.to(self.device), critic.to(self.device)
        self.value_norm = ValueNorm(ppo.norm_value).to(self.device)
        if config.compile:  # in place: the modules, their state_dict keys and DDP's wrapping stay as they are
            self.actor.compile()
            self.critic.compile()
        self._actor_train: torch.nn.Module = self.actor
        self._critic_train: torch.nn.Module = self.critic
        if is_distributed():
            # DDP broadcasts rank 0's parameters here, then averages gradients in backward().
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device] if self.device.type == "cuda" else None
            self._actor_train = DDP(self.actor, device_ids=ids)
            self._critic_train = DDP(self.critic, device_ids=ids)
        self.optimizer = make_optimizer(self.actor, self.critic, ppo, fused=True)
        self.expected_pg = ppo.pg_estimator == "expected"
        self.buffer = RolloutBuffer(ppo.rollout_len, env.num_worlds, N, D, env.state_dim, K, self.device,
                                    all_actions=self.expected_pg)
        self.num_iterations = max(1, ppo.total_steps // ppo.rollout_len)
        self.iteration = 0
        self.env_steps = 0
        self._gen = torch.Generator(device=self.device).manual_seed(config.seed)
        self._next = env.reset(seed=config.seed)
        self._episode_return = torch.zeros(env.num_worlds, device=self.device)
        self.history: list[dict[str, Any]] = []

    # ------------------------------------------------------------- schedules
    def _progress(self) -> float:
        """Fraction of the iterations done, in [0, 1)."""
        return self.iteration / self.num_iterations

    def lr_factor(self) -> float:
        """The factor of both learning rates now: ``1 - progress`` with ``ppo.anneal_lr`` (linear to
        0 over the run), else 1."""
        return 1.0 - self._progress() if self.config.ppo.anneal_lr else 1.0

    def current_lr(self) -> float:
        """The actor's ``lr`` now (annealed with ``ppo.anneal_lr``)."""
        return self.config.ppo.lr * self.lr_factor()

    def current_ent_coef(self) -> float:
        """``ent_coef``, annealed linearly to ``ent_coef_end`` over the run when that is set."""
        ppo = self.config.ppo
        if ppo.ent_coef_end is None:
            return ppo.ent_coef
        return ppo.ent_coef + (ppo.ent_coef_end - ppo.ent_coef) * self._progress()

    # ------------------------------------------------------------ collection
    def collect(self) -> dict[str, float]:
        """Fill the buffer with ``rollout_len`` steps of every world; returns the rollout's figures
        (``episode_reward``, ``reward`` and the env's per-step metrics), read back once at the end.

        Values are stored de-normalised (on the returns' scale), so GAE sees real rewards.
        """
        return self._collect_metrics(read_scalars(self._collect())[0])

    @torch.no_grad()
    def _collect(self) -> dict[str, torch.Tensor]:
        """:meth:`collect` without the read-back: no step waits for the device. Returns 0-d tensors
        for :meth:`_collect_metrics`: the sum and the count of the finished episodes' returns, the
        mean reward and the sum over steps of each env metric's mean (``info/<name>``)."""
        buf, env, vn = self.buffer, self.env, self.value_norm
        finished_sum = torch.zeros((), device=self.device)
        finished_n = torch.zeros((), device=self.device)
        info_sum: dict[str, torch.Tensor] = {}
        cur = self._next
        value = None
        for t in range(buf.T):
            dist = self.actor.distribution(cur.obs, cur.action_mask)
            action = dist.sample()
            if value is None:
                value = vn.denormalize(self.critic(cur.obs, cur.state))
            nxt = env.step(action)
            next_value = vn.denormalize(self.critic(nxt.final_obs, nxt.final_state))
            every = {}
            if self.expected_pg:
                reward_all = getattr(nxt, "reward_all", None)
                if reward_all is None:
                    raise ValueError("ppo.pg_estimator=expected needs an env that reports every action's reward "
                                     "(PromptEnv with all_action_rewards)")
                every = {"probs": dist.probs, "reward_all": reward_all}
            buf.add(t, obs=cur.obs, state=cur.state, action_mask=cur.action_mask, action=action,
                    log_prob=dist.log_prob(action), reward=nxt.reward, value=value, next_value=next_value,
                    terminated=nxt.terminated, truncated=nxt.truncated, **every)
            self._episode_return += nxt.reward.mean(-1)
            done = nxt.done
            finished_sum += (self._episode_return * done).sum()
            finished_n += done.sum()
            self._episode_return *= ~done
            for k, v in nxt.metrics().items():
                info_sum[k] = info_sum.get(k, 0) + v.float().mean()
            # no world reset (the env hands back the same tensors): V(s') is the next step's V(s)
            value = next_value if nxt.final_obs is nxt.obs and nxt.final_state is nxt.state else None
            cur = nxt
        self._next = cur
        self.env_steps += buf.T
        return {"finished_sum": finished_sum, "finished_n": finished_n, "reward": buf.reward.mean()} | {
            f"info/{k}": v for k, v in info_sum.items()}

    def _collect_metrics(self, values: dict[str, float]) -> dict[str, float]:
        """:meth:`collect`'s figures from :meth:`_collect`'s, read."""
        n = values["finished_n"]
        return {
            "episode_reward": values["finished_sum"] / n if n else float("nan"),
            "reward": values["reward"],
        } | {k.removeprefix("info/"): v / self.buffer.T for k, v in values.items() if k.startswith("info/")}

    # ---------------------------------------------------------------- update
    def update(self) -> dict[str, float]:
        """GAE, then :func:`training.update.ppo_update` over the flattened buffer (``update_epochs``
        passes of ``num_minibatches`` clipped-PPO steps, ``target_kl`` early stop); returns its
        figures, read back once at the end."""
        pending, extra = self._update()
        update_values, extra_values = read_scalars(pending.metrics, extra)
        return self._update_metrics(pending, update_values, extra_values)

    def _update(self) -> tuple[PendingUpdate, dict[str, torch.Tensor | float]]:
        """:meth:`update` without the read-back (:func:`training.update.ppo_update`): no
        minibatch step waits for the device. Returns the pending update and the other figures
        (explained variance, entropy coefficient, value normaliser's moments)."""
        ppo, buf, vn = self.config.ppo, self.buffer, self.value_norm
        buf.compute_advantages(ppo.gamma, ppo.gae_lambda)
        vn.update(buf.returns)
        batch = buf.ppo_batch()
        batch = replace(batch, returns=vn.normalize(batch.returns), value=vn.normalize(batch.value))
        ent_coef = self.current_ent_coef()
        pending = ppo_update(self._actor_train, self._critic_train, self.optimizer, batch, ppo, self._gen, ent_coef)
        extra = {"explained_variance": explained_variance_tensor(buf.value.flatten(), buf.returns.flatten()),
                 "ent_coef": ent_coef, "value_mean": vn.mean, "value_std": vn.std}
        return pending, extra

    @staticmethod
    def _update_metrics(pending: PendingUpdate, update_values: dict[str, float],
                        extra_values: dict[str, float]) -> dict[str, float]:
        """:meth:`update`'s figures from :meth:`_update`'s, read."""
        result = pending.finish(update_values)
        steps, stopped = result.pop("grad_steps"), result.pop("early_stop")
        result["explained_variance"] = extra_values["explained_variance"]
        result["ent_coef"] = extra_values["ent_coef"]
        result["grad_steps"] = steps
        result["early_stop"] = stopped
        result["value_mean"], result["value_std"] = extra_values["value_mean"], extra_values["value_std"]
        return result

    def train(self, on_iteration: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Run the remaining iterations (all of them, or those after a resume); returns the metrics.

        ``on_iteration`` is called with each iteration's metrics (progress bars, files, saving).
        Each iteration waits for the device once: the collection's and the update's figures are read
        back together after the update. ``collect_agent_steps_per_s`` times the collection on the
        device's clock (CUDA events on CUDA, so no sync is needed between the two phases).
        """
        ppo = self.config.ppo
        agent_steps_per_iter = ppo.rollout_len * self.env.num_worlds * self.env.num_routers
        cuda = self.device.type == "cuda"
        while self.iteration < self.num_iterations:
            lr, critic_lr = set_learning_rates(self.optimizer, ppo, self.lr_factor())
            start = time.perf_counter()
            if cuda:
                events = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                events[0].record()
            collected = self._collect()
            collect_s = time.perf_counter() - start
            if cuda:
                events[1].record()
            pending, extra = self._update()
            collect_values, update_values, extra_values = read_scalars(collected, pending.metrics, extra)
            metrics = self._collect_metrics(collect_values) | self._update_metrics(pending, update_values,
                                                                                   extra_values)
            elapsed = time.perf_counter() - start
            if cuda:
                collect_s = events[0].elapsed_time(events[1]) / 1000
            self.iteration += 1
            metrics |= {
                "iteration": self.iteration,
                "env_steps": self.env_steps,
                "agent_steps": self.iteration * agent_steps_per_iter,
                "lr": lr,
                "critic_lr": critic_lr,
                "collect_agent_steps_per_s": agent_steps_per_iter / max(collect_s, 1e-9),
                "iteration_s": elapsed,
            }
            self.history.append(metrics)
            if on_iteration is not None:
                on_iteration(metrics)
        return self.history

    # ---------------------------------------------------------------- resume
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue this run exactly: networks, optimizer, value normaliser,
        counters, RNG states (global torch, the minibatch generator, CUDA), the env's state (when
        it has ``state_dict``) and the obs the next rollout starts from."""
        state: dict[str, Any] = {
            "actor": self.actor.state_dict(),
            "critic": self.critic.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "value_norm": self.value_norm.state_dict(),
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "episode_return": self._episode_return.clone(),
            "minibatch_rng": self._gen.get_state(),
            "torch_rng": torch.get_rng_state(),
            "next": {"obs": self._next.obs, "state": self._next.state, "action_mask": self._next.action_mask},
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if hasattr(self.env, "state_dict"):
            state["env"] = self.env.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s output; the next :meth:`train` continues where it stopped.

        Raises:
            KeyError, RuntimeError: a state of another shape or layout (wrong network or env).
        """
        self.actor.load_state_dict(state["actor"])
        self.critic.load_state_dict(state["critic"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.value_norm.load_state_dict(state["value_norm"])
        self.iteration, self.env_steps = int(state["iteration"]), int(state["env_steps"])
        self._episode_return = state["episode_return"].to(self.device)
        self._gen.set_state(state["minibatch_rng"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        if "env" in state and hasattr(self.env, "load_state_dict"):
            self.env.load_state_dict(state["env"])
        nxt = {k: v.to(self.device) for k, v in state["next"].items()}
        zeros = torch.zeros(self.env.num_worlds, self.env.num_routers, device=self.device)
        never = torch.zeros(self.env.num_worlds, dtype=torch.bool, device=self.device)
        self._next = MultiAgentStep(nxt["obs"], nxt["state"], nxt["action_mask"], zeros, never, never,
                                    nxt["obs"], nxt["state"])
