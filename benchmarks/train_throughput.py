"""Training throughput of the MAPPO router: collection, PPO update (ours vs TorchRL), time to target, memory.

Run from the repository root (or anywhere: the script finds the repository)::

    python benchmarks/train_throughput.py --quick --threads 1  # CPU, a few minutes on 2 cores
    python benchmarks/train_throughput.py --device cuda        # GPU: B = 4096, 16384, 65536
    python benchmarks/train_throughput.py --synthetic --quick  # no embedding model, random data

Data: the train split of the configured dataset (``configs/default.yaml``: the shipped
``data/llmrouter-dc``, 3612 train prompts, 9 agents) with its SBERT embeddings from the on-disk
cache (``embed.cache_dir``; a cold cache embeds 5160 prompts first, ~2 min on 2 CPU cores), or with
``--synthetic`` 2048 random unit embeddings of dim 384 and prompt-dependent random qualities.

What is measured (every time is the median of ``--repeats`` runs after one warm-up run, with
``torch.cuda.synchronize()`` before each timer read on CUDA; on CPU the process CPU time
(``time.process_time``) is reported beside wall time, as the steadier figure on a shared machine):

a) Collection: agent-steps per second (``T * B * N`` per call) of ``MAPPOTrainer.collect()`` on
   ``PromptEnv`` (policy sampling, two critic passes, env step, buffer writes), and separately of
   raw ``PromptEnv.step`` with random valid actions drawn on device, for every ``B`` of
   ``--worlds`` and ``N`` of ``--routers``. On CUDA also the host-device syncs per ``T`` steps
   (``torch.cuda.set_sync_debug_mode``).
b) PPO update: one ``MAPPOTrainer.update()`` (our GAE ``training.gae``, our ``training.ppo.ppo_loss``,
   backward, grad-norm clip, Adam, ``update_epochs x num_minibatches`` steps) against the same update
   written with TorchRL (``torchrl.objectives.value.functional.generalized_advantage_estimate`` and
   ``torchrl.objectives.ClipPPOLoss`` over the same ``Actor``/``Critic`` modules wrapped in
   ``TensorDictModule``/``ProbabilisticActor``/``ValueOperator``), from identical weights on the
   identical rollout with identical minibatch indices, the two interleaved run by run. Equal
   numerics are asserted first (GAE and every loss term of the first minibatch to 1e-5); the largest
   parameter difference after one whole update of each is reported. Throughput is agent-samples per
   second, ``update_epochs * T * B * N / seconds``; ``ratio`` is ours / TorchRL (goal: 1.5).
c) Time to target: the default config trained from scratch; wall time (trainer construction
   included) until the *train* rollout reward (``MAPPOTrainer.collect()``'s mean per-step reward
   of the sampled policy) first reaches each ``--target-frac`` x the train-split reward of the best
   single agent; bounded by ``ppo.total_steps`` (``--ttt-steps``).
d) Memory: on CUDA ``torch.cuda.max_memory_allocated`` per collection setting; everywhere the bytes
   of the preallocated ``RolloutBuffer`` tensors and the peak RSS (``resource.getrusage``).

Tables go to stdout; the last line of stdout is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from env.prompt_env import PromptEnv  # noqa: E402
from training.buffer import RolloutBuffer  # noqa: E402
from training.config import TrainConfig, load_config  # noqa: E402
from training.gae import generalized_advantage_estimate  # noqa: E402
from training.ppo import ppo_loss  # noqa: E402
from training.trainer import MAPPOTrainer, explained_variance, seed_everything  # noqa: E402

GOAL_UPDATE_RATIO = 1.5  # ours / TorchRL update throughput (the goal)
GOAL_CUDA_AGENT_STEPS = 10_000_000  # collection agent-steps/s on CUDA with B >= 4096
NUMERICS_ATOL = 1e-5


# ------------------------------------------------------------------------------------ utilities


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for but torch.cuda.is_available() is False")
    return torch.device(name)


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, repeats: int,
          warmup: int = 1) -> tuple[list[float], list[float]]:
    """``(wall, cpu)`` seconds of each of ``repeats`` calls of ``fn`` after ``warmup`` untimed ones.

    ``cpu`` is this process's CPU time (``time.process_time``, all threads): on a shared, loaded
    CPU it counts the work done and not the time spent descheduled, so it is the steadier figure
    there; on CUDA only ``wall`` means anything.
    """
    for _ in range(warmup):
        fn()
    wall, cpu = [], []
    for _ in range(repeats):
        sync(device)
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return wall, cpu


def count_host_syncs(fn: Callable[[], Any], device: torch.device) -> int | None:
    """Host-device synchronisations during ``fn()`` (CUDA's sync debug mode; None on CPU)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far, bytes (``ru_maxrss`` is KiB on Linux)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024)


def buffer_bytes(buf: RolloutBuffer) -> int:
    """Sum of ``nbytes`` of every tensor the rollout buffer holds."""
    return int(sum(v.nbytes for v in vars(buf).values() if isinstance(v, torch.Tensor)))


def fmt_rate(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= scale:
            return f"{x / scale:.2f}{unit}"
    return f"{x:.0f}"


def fmt_bytes(x: float | None) -> str:
    if x is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} B"


def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    """Print a fixed-width table."""
    cells = [header, *[[str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for r in cells[1:]:
        print("  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))


# ---------------------------------------------------------------------------------------- data


@dataclass
class RoutingData:
    """Prompts of the train split as the env sees them, plus the baselines for the target.

    Attributes:
        embeddings: ``[P, E]`` float32, unit-norm prompt embeddings (MiniLM, 384-d, or random).
        quality: ``[P, K]`` float32 in [0, 1].
        cost_usd: ``[P, K]`` float32, USD per call.
        capacities: length ``K``, requests per step (None = unbounded).
        best_single_reward: train-split mean reward of the best single agent.
        val: ``(embeddings [P', E], quality [P', K])`` of the val split, or None.
        source: a description for the report.
    """

    embeddings: np.ndarray
    quality: np.ndarray
    cost_usd: np.ndarray
    capacities: list[int | None]
    best_single_reward: float
    best_single_agent: str
    val: tuple[np.ndarray, np.ndarray] | None
    source: str


def load_shipped(cfg: TrainConfig) -> RoutingData:
    """The configured dataset's train split with its cached SBERT embeddings (``cfg.embed.cache_dir``)."""
    from training.data import load_splits
    from training.evaluation.offline import baselines

    splits = load_splits(cfg, device="cpu")
    train, val = splits.splits["train"], splits.splits["val"]
    base = baselines(train, train, cfg.env.cost_weight)["best_single"]
    emb = splits.embeddings("train")
    return RoutingData(
        embeddings=emb, quality=train.quality, cost_usd=train.cost_usd, capacities=train.capacities,
        best_single_reward=float(base["reward"]), best_single_agent=str(base["agent"]),
        val=(splits.embeddings("val"), val.quality),
        source=f"{cfg.data.prompts} train split ({len(train)} prompts, {emb.shape[1]}-d {splits.embedder.model_id})",
    )


def load_synthetic(cost_weight: float, prompts: int = 2048, dim: int = 384, agents: int = 9,
                   seed: int = 0) -> RoutingData:
    """Random unit embeddings ``[P, 384]``; quality ``sigmoid(3 * emb @ W)`` with a random ``W [384, K]``
    (so the best agent depends on the prompt and routing can beat any single agent)."""
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(prompts + prompts // 4, dim, generator=g), dim=-1)
    w = torch.randn(dim, agents, generator=g) * 3.0
    quality = torch.sigmoid(emb @ w)
    cost = torch.rand(prompts + prompts // 4, agents, generator=g) * 1e-4
    reward = (quality - cost_weight * cost)[:prompts]
    best = int(reward.mean(0).argmax())
    return RoutingData(
        embeddings=emb[:prompts].numpy(), quality=quality[:prompts].numpy(), cost_usd=cost[:prompts].numpy(),
        capacities=[None] * agents, best_single_reward=float(reward.mean(0)[best]),
        best_single_agent=f"agent{best}", val=(emb[prompts:].numpy(), quality[prompts:].numpy()),
        source=f"synthetic ({prompts} random unit embeddings, {dim}-d, {agents} agents)",
    )


def make_config(base: TrainConfig, device: torch.device, **overrides: Any) -> TrainConfig:
    """``base`` with dotted overrides (``env__num_worlds=...`` style keys use ``__`` for ``.``)."""
    tree = base.model_dump(mode="json")
    tree["device"] = str(device)
    for key, value in overrides.items():
        node = tree
        *path, last = key.split("__")
        for p in path:
            node = node[p]
        node[last] = value
    return TrainConfig.model_validate(tree)


def make_env(data: RoutingData, cfg: TrainConfig, device: torch.device) -> PromptEnv:
    """PromptEnv as ``training.run.build_env`` builds it (actions unchecked, as in training)."""
    return PromptEnv(data.embeddings, data.quality, data.cost_usd, data.capacities, cfg.env, device=device,
                     seed=cfg.seed, validate_actions=False)


# ------------------------------------------------------------------------------ a) collection


def bench_collect(data: RoutingData, base: TrainConfig, device: torch.device, B: int, N: int, T: int,
                  repeats: int) -> dict[str, Any]:
    """``MAPPOTrainer.collect()`` and raw ``PromptEnv.step`` agent-steps per second at ``(B, N, T)``."""
    cfg = make_config(base, device, env__num_worlds=B, env__num_routers=N, ppo__rollout_len=T)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    seed_everything(cfg.seed)
    env = make_env(data, cfg, device)
    trainer = MAPPOTrainer(cfg, env)
    collect_times, collect_cpu = timed(trainer.collect, device, repeats)
    collect_syncs = count_host_syncs(trainer.collect, device)
    peak_gpu = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    buf_bytes = buffer_bytes(trainer.buffer)
    del trainer

    # raw env.step, uniformly random actions among the allowed ones (drawn on device, no host sync)
    raw_env = make_env(data, cfg, device)
    out = raw_env.reset(seed=cfg.seed)
    g = torch.Generator(device=device).manual_seed(cfg.seed)
    K = raw_env.num_actions

    def rollout() -> None:
        nonlocal out
        for _ in range(T):
            u = torch.rand(B, N, K, generator=g, device=device)
            out = raw_env.step(u.masked_fill_(~out.action_mask, -1.0).argmax(-1))

    step_times, step_cpu = timed(rollout, device, repeats)
    step_syncs = count_host_syncs(rollout, device)
    steps = T * B * N
    c_med, s_med = statistics.median(collect_times), statistics.median(step_times)
    return {
        "B": B, "N": N, "T": T,
        "collect_agent_steps_per_s": steps / c_med,
        "collect_agent_steps_per_cpu_s": steps / statistics.median(collect_cpu),
        "collect_s_median": c_med,
        "collect_s_all": collect_times,
        "collect_cpu_s_all": collect_cpu,
        "env_step_agent_steps_per_s": steps / s_med,
        "env_step_agent_steps_per_cpu_s": steps / statistics.median(step_cpu),
        "env_step_s_median": s_med,
        "env_step_s_all": step_times,
        "env_step_cpu_s_all": step_cpu,
        "buffer_bytes": buf_bytes,
        "peak_gpu_bytes": peak_gpu,
        "collect_host_syncs_per_call": collect_syncs,  # CUDA only; a call is T steps
        "env_step_host_syncs_per_T_steps": step_syncs,
    }


# ---------------------------------------------------------------------------------- b) update


class _Unsqueeze(torch.nn.Module):
    """Our critic's ``[..., N]`` values as ``[..., N, 1]``: TorchRL wants a trailing feature dim."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, *x: torch.Tensor) -> torch.Tensor:
        return self.net(*x).unsqueeze(-1)


def torchrl_loss_module(actor: torch.nn.Module, critic: torch.nn.Module, cfg: TrainConfig, ent_coef: float):
    """``ClipPPOLoss`` over OUR actor and critic, on TorchRL's multi-agent layout.

    Conventions mapped (see ``tests/training/test_reference_torchrl.py``): ``loss_critic_type="l2"``
    has no 1/2, so ``critic_coeff = 0.5 * vf_coef``; ``clip_value`` = our ``clip_vloss``; advantage
    normalisation is TorchRL's own (``(A - mean) / std``, unbiased std, like ours); the per-minibatch
    explained variance is off (ours computes it once per update, and so does the TorchRL loop here).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from tensordict.nn import TensorDictModule
        from torchrl.modules import ProbabilisticActor, ValueOperator
        from torchrl.objectives import ClipPPOLoss

    ppo = cfg.ppo
    policy = ProbabilisticActor(
        TensorDictModule(actor, in_keys=[("agents", "observation"), ("agents", "action_mask")],
                         out_keys=[("agents", "logits")]),
        in_keys={"logits": ("agents", "logits")},
        out_keys=[("agents", "action")],
        distribution_class=torch.distributions.Categorical,
    )
    value = ValueOperator(_Unsqueeze(critic), in_keys=[("agents", "observation"), "state"],
                          out_keys=[("agents", "state_value")])
    loss = ClipPPOLoss(
        policy, value, clip_epsilon=ppo.clip_coef, entropy_bonus=True, entropy_coeff=ent_coef,
        critic_coeff=0.5 * ppo.vf_coef, loss_critic_type="l2", normalize_advantage=ppo.norm_adv,
        clip_value=ppo.clip_vloss, log_explained_variance=False,
    )
    loss.set_keys(action=("agents", "action"), sample_log_prob=("agents", "action_log_prob"),
                  advantage=("agents", "advantage"), value_target=("agents", "value_target"),
                  value=("agents", "state_value"))
    return loss


class TorchRLUpdate:
    """``MAPPOTrainer.update()`` written the TorchRL way: functional GAE, a TensorDict of the rollout,
    ``ClipPPOLoss`` per minibatch, the same grad-norm clip and Adam (eps 1e-5) over the same modules.

    Value targets are normalised with a copy of the trainer's ``value_norm`` (when it has one), as
    the trainer does, so that both see identical batches.
    """

    def __init__(self, trainer: MAPPOTrainer) -> None:
        self.cfg, self.buf = trainer.config, trainer.buffer
        self.actor, self.critic = copy.deepcopy(trainer.actor), copy.deepcopy(trainer.critic)
        self.value_norm = copy.deepcopy(getattr(trainer, "value_norm", None))
        ent = trainer.current_ent_coef() if hasattr(trainer, "current_ent_coef") else trainer.config.ppo.ent_coef
        self.loss = torchrl_loss_module(self.actor, self.critic, self.cfg, ent)
        self.params = [*self.actor.parameters(), *self.critic.parameters()]
        lr = trainer.optimizer.param_groups[0]["lr"]
        self.optimizer = torch.optim.Adam(self.params, lr=lr, eps=1e-5)
        self.gen = torch.Generator(device=trainer._gen.device)

    def gae(self, gamma: float | None = None, lam: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """TorchRL's functional GAE on the buffer (``ppo.gamma``/``gae_lambda`` unless given), ``[T, B, N]`` each."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torchrl.objectives.value.functional import generalized_advantage_estimate as tr_gae
        ppo, buf = self.cfg.ppo, self.buf
        gamma = ppo.gamma if gamma is None else gamma
        lam = ppo.gae_lambda if lam is None else lam
        shape = buf.value.shape
        done = (buf.terminated | buf.truncated).unsqueeze(-1).expand(shape).unsqueeze(-1)
        term = buf.terminated.unsqueeze(-1).expand(shape).unsqueeze(-1)
        adv, ret = tr_gae(gamma, lam, buf.value.unsqueeze(-1), buf.next_value.unsqueeze(-1),
                          buf.reward.unsqueeze(-1), done, term, time_dim=0)
        return adv.squeeze(-1), ret.squeeze(-1)

    def tensordict(self, value_norm: Any = None):
        """The rollout as ``TensorDict(batch [T * B])`` with an ``agents`` sub-tensordict ``[T * B, N]``,
        and the raw ``(advantage, returns)`` ``[T, B, N]``; ``value_norm`` (updated with the returns)
        normalises the value targets and old values, as the trainer's does."""
        from tensordict import TensorDict

        buf, vn = self.buf, value_norm
        adv, ret = self.gae()
        old_value = buf.value
        if vn is not None:
            vn.update(ret)
            ret, old_value = vn.normalize(ret), vn.normalize(old_value)
        M, N = buf.T * buf.B, buf.N
        batch = buf.ppo_batch()
        agents = TensorDict({
            "observation": batch.obs, "action_mask": batch.action_mask, "action": batch.action,
            "action_log_prob": batch.log_prob, "advantage": adv.reshape(M, N, 1),
            "value_target": ret.reshape(M, N, 1), "state_value": old_value.reshape(M, N, 1),
        }, batch_size=[M, N])
        return TensorDict({"state": batch.state, "agents": agents}, batch_size=[M]), (adv, ret)

    def loss_terms(self, td) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "advantage has more dims than the batch": intended, one mean
            return self.loss(td)

    def update(self) -> dict[str, float]:
        ppo, buf = self.cfg.ppo, self.buf
        td, (_, ret) = self.tensordict(self.value_norm)
        stats = []
        for _ in range(ppo.update_epochs):
            for idx in buf.minibatch_indices(ppo.num_minibatches, self.gen):
                out = self.loss_terms(td[idx])
                loss = out["loss_objective"] + out["loss_critic"] + out["loss_entropy"]
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.params, ppo.max_grad_norm)
                self.optimizer.step()
                stats.append(torch.stack([out["loss_objective"].detach(), out["loss_critic"].detach(),
                                          out["entropy"], out["kl_approx"], out["clip_fraction"]]))
        result = dict(zip(("policy_loss", "critic_loss", "entropy", "kl_approx", "clipfrac"),
                          torch.stack(stats).mean(0).tolist(), strict=True))
        result["explained_variance"] = explained_variance(buf.value.flatten(), ret.flatten())
        return result


def check_numerics(trainer: MAPPOTrainer, ref: TorchRLUpdate) -> dict[str, float]:
    """Assert that our GAE and loss equal TorchRL's on the first minibatch; return the max differences.

    Ours is computed exactly as ``MAPPOTrainer.update`` does (same distribution, advantage
    normalisation, value normalisation, ``ppo_loss``), from the same weights.
    """
    ppo, buf = trainer.config.ppo, trainer.buffer
    diffs: dict[str, float] = {}
    # GAE at the configured (gamma, lambda) and at (0.99, 0.95) so that the recursion is exercised
    shape = buf.value.shape
    done = (buf.terminated | buf.truncated).unsqueeze(-1).expand(shape)
    term = buf.terminated.unsqueeze(-1).expand(shape)
    for gamma, lam in ((ppo.gamma, ppo.gae_lambda), (0.99, 0.95)):
        ours = generalized_advantage_estimate(buf.reward, buf.value, buf.next_value, done, term, gamma, lam)
        theirs = ref.gae(gamma, lam)
        # relative to the size of the returns (float32 sums of up to T rewards)
        diffs[f"gae_rel_diff_g{gamma}_l{lam}"] = max(
            float((a - b).abs().max()) / max(1.0, float(b.abs().max())) for a, b in zip(ours, theirs, strict=True))

    td, (adv, ret) = ref.tensordict(copy.deepcopy(ref.value_norm))
    vn = getattr(trainer, "value_norm", None)
    old_value = buf.value
    if vn is not None:
        vn = copy.deepcopy(vn)
        vn.update(ret)
        ret, old_value = vn.normalize(ret), vn.normalize(old_value)
    gen = torch.Generator(device=trainer._gen.device)
    gen.set_state(trainer._gen.get_state())
    idx = next(buf.minibatch_indices(ppo.num_minibatches, gen))
    batch = buf.ppo_batch()
    obs, state, mask = batch.obs[idx], batch.state[idx], batch.action_mask[idx]
    ent = trainer.current_ent_coef() if hasattr(trainer, "current_ent_coef") else ppo.ent_coef
    dist = torch.distributions.Categorical(logits=trainer.actor(obs, mask))
    a = adv.reshape(-1, buf.N)[idx]
    if ppo.norm_adv and a.numel() > 1:
        a = (a - a.mean()) / (a.std() + 1e-8)
    ours = ppo_loss(dist.log_prob(batch.action[idx]), batch.log_prob[idx], a,
                    trainer.critic(obs, state), old_value.reshape(-1, buf.N)[idx], ret.reshape(-1, buf.N)[idx],
                    dist.entropy(), ppo.clip_coef, ent, ppo.vf_coef, ppo.clip_vloss)
    theirs = ref.loss_terms(td[idx])
    pairs = {
        "policy_loss": (ours.policy_loss, theirs["loss_objective"]),
        "value_loss_weighted": (ppo.vf_coef * ours.value_loss, theirs["loss_critic"]),
        "entropy": (ours.entropy, theirs["entropy"]),
        "loss": (ours.loss, theirs["loss_objective"] + theirs["loss_critic"] + theirs["loss_entropy"]),
        "clipfrac": (ours.clipfrac, theirs["clip_fraction"]),
    }
    for name, (x, y) in pairs.items():
        diffs[f"{name}_abs_diff"] = float((x.detach() - y.detach()).abs())
    for name, d in diffs.items():
        assert d <= NUMERICS_ATOL, f"ours and TorchRL differ: {name} = {d:.3g} (> {NUMERICS_ATOL:g})"
    return diffs


def param_max_abs_diff(a: list[torch.nn.Module], b: list[torch.nn.Module]) -> float:
    with torch.no_grad():
        return max(float((p - q).abs().max()) for ma, mb in zip(a, b, strict=True)
                   for p, q in zip(ma.parameters(), mb.parameters(), strict=True))


def bench_update(data: RoutingData, base: TrainConfig, device: torch.device, B: int, N: int, T: int,
                 repeats: int) -> dict[str, Any]:
    """Time ``MAPPOTrainer.update()`` against :class:`TorchRLUpdate` on one collected rollout."""
    cfg = make_config(base, device, env__num_worlds=B, env__num_routers=N, ppo__rollout_len=T)
    seed_everything(cfg.seed)
    trainer = MAPPOTrainer(cfg, make_env(data, cfg, device))
    trainer.collect()
    ref = TorchRLUpdate(trainer)

    numerics = check_numerics(trainer, ref)
    # one whole update from identical weights and minibatch order: the parameters should still agree
    ref.gen.set_state(trainer._gen.get_state())
    trainer.update()
    ref.update()
    numerics["param_max_abs_diff_after_update"] = param_max_abs_diff([trainer.actor, trainer.critic],
                                                                     [ref.actor, ref.critic])

    ours_t, theirs_t, ours_cpu, theirs_cpu = [], [], [], []
    for _ in range(repeats):  # interleaved, so that load from other processes hits both alike
        wall, cpu = timed(trainer.update, device, 1, warmup=0)
        ours_t += wall
        ours_cpu += cpu
        wall, cpu = timed(ref.update, device, 1, warmup=0)
        theirs_t += wall
        theirs_cpu += cpu
    samples = cfg.ppo.update_epochs * T * B * N
    o, t = statistics.median(ours_t), statistics.median(theirs_t)
    o_cpu, t_cpu = statistics.median(ours_cpu), statistics.median(theirs_cpu)
    return {
        "B": B, "N": N, "T": T, "agent_samples_per_update": T * B * N, "update_epochs": cfg.ppo.update_epochs,
        "num_minibatches": cfg.ppo.num_minibatches,
        "ours_samples_per_s": samples / o, "torchrl_samples_per_s": samples / t, "ratio": t / o,
        "ours_samples_per_cpu_s": samples / o_cpu, "torchrl_samples_per_cpu_s": samples / t_cpu,
        "ratio_cpu_time": t_cpu / o_cpu,
        "ours_s_median": o, "torchrl_s_median": t, "ours_s_all": ours_t, "torchrl_s_all": theirs_t,
        "ours_cpu_s_all": ours_cpu, "torchrl_cpu_s_all": theirs_cpu,
        "numerics": numerics,
    }


# -------------------------------------------------------------------------- c) time to target


class _Reached(Exception):
    pass


@torch.no_grad()
def greedy_val_quality(trainer: MAPPOTrainer, data: RoutingData) -> float | None:
    """Mean val quality of the greedy policy, each prompt routed at zero load (router 0's obs)."""
    if data.val is None:
        return None
    env, device = trainer.env, trainer.device
    emb = torch.as_tensor(data.val[0], dtype=torch.float32, device=device)
    parts = [emb, torch.zeros(len(emb), env.num_actions, device=device)]
    if env.config.include_agent_id:
        parts.append(torch.nn.functional.one_hot(torch.zeros(len(emb), dtype=torch.long, device=device),
                                                 env.num_routers).float())
    obs = torch.cat(parts, -1).unsqueeze(1).expand(-1, env.num_routers, -1)
    choice = trainer.actor(obs)[:, 0].argmax(-1).cpu().numpy()
    return float(data.val[1][np.arange(len(choice)), choice].mean())


def bench_time_to_target(data: RoutingData, base: TrainConfig, device: torch.device, fracs: list[float],
                         total_steps: int | None) -> dict[str, Any]:
    """Train the base config from scratch until the train rollout reward reaches every target
    ``frac * best_single_reward`` (or the budget ends); the clock starts before the trainer is built."""
    overrides = {} if total_steps is None else {"ppo__total_steps": total_steps}
    cfg = make_config(base, device, **overrides)
    targets = {frac: frac * data.best_single_reward for frac in sorted(fracs)}
    seed_everything(cfg.seed)
    start = time.perf_counter()
    trainer = MAPPOTrainer(cfg, make_env(data, cfg, device))
    hits: dict[float, dict[str, Any]] = {}

    def on_iteration(m: dict[str, Any]) -> None:
        for frac, target in targets.items():
            if frac not in hits and m["reward"] >= target:
                sync(device)
                hits[frac] = {"time_to_target_s": time.perf_counter() - start, "iterations": m["iteration"],
                              "agent_steps": m["agent_steps"], "reward_at_target": m["reward"]}
        if len(hits) == len(targets):
            raise _Reached

    with contextlib.suppress(_Reached):
        trainer.train(on_iteration)
    wall = time.perf_counter() - start
    last = trainer.history[-1] if trainer.history else {}
    per_target = [{"target_frac": frac, "target": target, "reached": frac in hits,
                   **hits.get(frac, {"time_to_target_s": None, "iterations": None, "agent_steps": None,
                                     "reward_at_target": None})} for frac, target in targets.items()]
    return {
        "metric": "train rollout reward (mean per-step reward of the sampled policy over one collect())",
        "best_single_train_reward": data.best_single_reward, "best_single_agent": data.best_single_agent,
        "targets": per_target,
        "budget_total_steps": cfg.ppo.total_steps, "budget_iterations": trainer.num_iterations,
        "wall_s": wall, "iterations_run": len(trainer.history), "last_reward": last.get("reward"),
        "B": cfg.env.num_worlds, "N": cfg.env.num_routers, "T": cfg.ppo.rollout_len,
        "val_greedy_quality": greedy_val_quality(trainer, data),
    }


# ----------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu | cuda | cuda:i | auto")
    p.add_argument("--worlds", type=int, nargs="+", default=None,
                   help="B values for collection (default: 256 4096 on CPU, 4096 16384 65536 on CUDA)")
    p.add_argument("--routers", type=int, nargs="+", default=[1, 4], help="N values")
    p.add_argument("--update-worlds", type=int, nargs="+", default=None,
                   help="B values for the update benchmark (default: 128 1024 on CPU, 128 512 with --quick; "
                        "4096 65536 on CUDA)")
    p.add_argument("--rollout-len", type=int, default=None, help="T (default: the config's ppo.rollout_len)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5 CPU, 10 CUDA; 3 quick)")
    p.add_argument("--quick", action="store_true", help="fewer repeats and a shorter time-to-target budget")
    p.add_argument("--synthetic", action="store_true",
                   help="random unit embeddings (384-d) and random qualities instead of the shipped data")
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, as for agent-router train (e.g. network.hidden=[64,64]); repeatable")
    p.add_argument("--target-frac", type=float, nargs="+", default=[0.95, 1.0],
                   help="time-to-target thresholds, as fractions of the best single agent's train reward "
                        "(the first is the headline figure)")
    p.add_argument("--ttt-steps", type=int, default=None,
                   help="ppo.total_steps budget of the time-to-target run (default: the config's; 3200 with --quick)")
    p.add_argument("--skip", nargs="*", default=[], choices=["collect", "update", "ttt"], help="parts to skip")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: torch's choice); 1 is steadier on a shared, loaded CPU")
    p.add_argument("--json-out", default=None, help="also write the JSON result to this file")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    cuda = device.type == "cuda"
    worlds = args.worlds or ([4096, 16384, 65536] if cuda else [256, 4096])
    update_worlds = args.update_worlds or ([4096, 65536] if cuda else ([128, 512] if args.quick else [128, 1024]))
    repeats = args.repeats or (3 if args.quick else (10 if cuda else 5))
    ttt_steps = args.ttt_steps if args.ttt_steps is not None else (3200 if args.quick else None)

    # relative paths of the config are relative to the repository root
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        base = load_config(args.config, args.overrides)
        data = (load_synthetic(base.env.cost_weight, seed=base.seed) if args.synthetic else load_shipped(base))
    finally:
        os.chdir(cwd)
    T = args.rollout_len or base.ppo.rollout_len
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result: dict[str, Any] = {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "torchrl": _version("torchrl"), "tensordict": _version("tensordict"),
        "python": platform.python_version(),
        "cpu_cores": cpus, "torch_threads": torch.get_num_threads(),
        "data": data.source, "synthetic": args.synthetic, "quick": args.quick,
        "config": str(args.config), "rollout_len": T, "repeats": repeats,
        "hidden": list(base.network.hidden), "overrides": args.overrides,
        "cuda_matmul_tf32": torch.backends.cuda.matmul.allow_tf32 if cuda else None,
 "centralised_critic": base.network.centralised_critic,
        "share_params": base.network.share_params,
    }
    print(f"device {device} ({result['device_name']}), torch {torch.__version__}, torchrl {result['torchrl']}, "
          f"{cpus} CPU cores, {torch.get_num_threads()} torch threads; data: {data.source}; T={T}, "
          f"median of {repeats} runs")

    if "collect" not in args.skip:
        rows, res = [], []
        for B in worlds:
            for N in args.routers:
                r = bench_collect(data, base, device, B, N, T, repeats)
                res.append(r)
                rows.append([B, N, T, fmt_rate(r["collect_agent_steps_per_s"]),
                             fmt_rate(r["collect_agent_steps_per_cpu_s"]),
                             fmt_rate(r["env_step_agent_steps_per_s"]), fmt_rate(r["env_step_agent_steps_per_cpu_s"]),
                             fmt_bytes(r["buffer_bytes"]),
                             fmt_bytes(r["peak_gpu_bytes"]),
                             "-" if r["collect_host_syncs_per_call"] is None else
                             f"{r['collect_host_syncs_per_call']}/{r['env_step_host_syncs_per_T_steps']}"])
        table("a) collection (agent-steps/s = T*B*N / wall s, and / process CPU s; "
              "host syncs per T steps: collect()/env.step, CUDA only)",
              ["B", "N", "T", "collect()", "(cpu)", "env.step", "(cpu)", "buffer", "peak GPU", "syncs"], rows)
        result["collect"] = res
        best = max(r["collect_agent_steps_per_s"] for r in res)
        result["collect_max_agent_steps_per_s"] = best
        if cuda:
            big = [r["collect_agent_steps_per_s"] for r in res if r["B"] >= 4096]
            result["goal_cuda_collect_agent_steps_per_s"] = GOAL_CUDA_AGENT_STEPS
            result["goal_cuda_collect_met"] = bool(big) and max(big) >= GOAL_CUDA_AGENT_STEPS

    if "update" not in args.skip:
        rows, res = [], []
        for B in update_worlds:
            for N in args.routers:
                r = bench_update(data, base, device, B, N, T, repeats)
                res.append(r)
                nm = r["numerics"]
                rows.append([B, N, r["agent_samples_per_update"], fmt_rate(r["ours_samples_per_s"]),
                             fmt_rate(r["torchrl_samples_per_s"]), f"{r['ratio']:.2f}x",
                             f"{r['ratio_cpu_time']:.2f}x",
                             f"{r['ours_s_median'] * 1e3:.1f}", f"{r['torchrl_s_median'] * 1e3:.1f}",
                             f"{nm['loss_abs_diff']:.1e}", f"{nm['param_max_abs_diff_after_update']:.1e}"])
        table(f"b) PPO update ({base.ppo.update_epochs} epochs x {base.ppo.num_minibatches} minibatches; "
              "samples/s = epochs*T*B*N / s; numerics: |loss diff| on minibatch 1, max |param diff| after 1 update)",
              ["B", "N", "samples", "ours/s", "torchrl/s", "ratio", "ratio(cpu)", "ours ms", "torchrl ms",
               "|dloss|", "|dparam|"],
              rows)
        result["update"] = res
        result["update_ratio_min"] = min(r["ratio"] for r in res)
        result["update_ratio_median"] = statistics.median(r["ratio"] for r in res)
        result["update_ratio_cpu_time_min"] = min(r["ratio_cpu_time"] for r in res)
        result["update_ratio_cpu_time_median"] = statistics.median(r["ratio_cpu_time"] for r in res)
        result["goal_update_ratio"] = GOAL_UPDATE_RATIO
        result["goal_update_met"] = result["update_ratio_min"] >= GOAL_UPDATE_RATIO

    if "ttt" not in args.skip:
        r = bench_time_to_target(data, base, device, args.target_frac, ttt_steps)
        result["time_to_target"] = r
        headline = next(x for x in r["targets"] if x["target_frac"] == args.target_frac[0])
        result["time_to_target_s"] = headline["time_to_target_s"]
        rows = [[f"{x['target_frac']:.2f} x {r['best_single_train_reward']:.4f} = {x['target']:.4f}",
                 f"{x['time_to_target_s']:.1f} s" if x["reached"] else "not reached",
                 x["iterations"] or "-", x["agent_steps"] or "-"] for x in r["targets"]]
        table(f"c) time to target (B={r['B']}, N={r['N']}, T={r['T']}; {r['metric']}; best single agent on "
              f"train: {r['best_single_agent']}; budget {r['budget_iterations']} iterations; ran "
              f"{r['iterations_run']} in {r['wall_s']:.1f} s; greedy val quality at the end "
              f"{r['val_greedy_quality'] if r['val_greedy_quality'] is None else round(r['val_greedy_quality'], 4)})",
              ["target", "time", "iterations", "agent-steps"], rows)

    memory: dict[str, Any] = {"peak_rss_bytes": peak_rss_bytes()}
    if "collect" in result:
        memory["buffer_bytes"] = {f"B{r['B']}_N{r['N']}": r["buffer_bytes"] for r in result["collect"]}
        if cuda:
            memory["peak_gpu_bytes"] = max(r["peak_gpu_bytes"] for r in result["collect"])
    if cuda:
        memory["max_memory_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    result["memory"] = memory
    table("d) memory", ["what", "bytes"],
          [["peak RSS", fmt_bytes(memory["peak_rss_bytes"])],
           *[[f"rollout buffer {k}", fmt_bytes(v)] for k, v in memory.get("buffer_bytes", {}).items()],
           *([["peak GPU (collect)", fmt_bytes(memory.get("peak_gpu_bytes"))]] if cuda else [])])

    line = json.dumps(result, default=float)
    if args.json_out:
        Path(args.json_out).write_text(line + "\n", encoding="utf-8")
    print(line)
    return result


def _version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
