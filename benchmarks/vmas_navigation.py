"""Our MAPPO trainer vs TorchRL's multi-agent PPO tutorial pipeline on VMAS navigation, discrete actions.

The task is VMAS ``navigation`` (Bettini et al. 2022, arXiv 2207.03530) with 3 agents, LIDAR and
collisions, episodes of ``max_steps = 100``. Both learners get the same frame budget (a frame is one
step of one world, all agents acting) and the hyper-parameters of the TorchRL tutorial
(https://pytorch.org/rl/stable/tutorials/multiagent_ppo.html): ``frames_per_batch`` 6000 from
``6000 // max_steps = 60`` worlds, 30 epochs of minibatches of 400 frames, Adam lr 3e-4, gradient
norm clip 1.0, PPO clip 0.2, gamma 0.99, GAE lambda 0.9, entropy coefficient 1e-4, no advantage
normalisation, 2 x 256 tanh MLPs, a shared decentralised actor and a shared centralised critic
(MAPPO, Yu et al. 2021, arXiv 2103.01955) on the concatenated observations.

Differences kept on purpose, reported in the output:

- Actions are DISCRETE for both (``continuous_actions=False``; VMAS's 9 flat actions per agent); the
  tutorial's TanhNormal actor is replaced by a categorical one.
- TorchRL's ``VmasEnv`` reports VMAS's single done flag as ``terminated`` (its docstring says so), so
  the tutorial does not bootstrap at the 100-step time limit; our adapter keeps truncation apart and
  our GAE bootstraps from the true next obs there.
- Value loss: TorchRL's ClipPPOLoss uses smooth-L1 with coefficient 1; ours ``0.5 * MSE`` with
  ``vf_coef = 1`` (equal for errors below 1).
- TorchRL 0.14 renamed ``SyncDataCollector`` to ``Collector``; whichever exists is used. Every part
  used here is pure Python; torchrl's compiled extension (not loadable against this torch) is not needed.

Evaluation, the same for both: (1) the training curve's mean episode reward per agent (sum over an
episode of the agents' mean reward, over the episodes that ended in an iteration), last iteration;
(2) a separate greedy (argmax) evaluation of each final policy on 60 navigation worlds seeded with
``--eval-seed`` (identical start states for both), one 100-step episode per world: mean episode reward
per agent and the fraction of episodes in which all agents reached their goals. A uniform random
policy is evaluated the same way for scale.

Prints a table and, as its last line, one JSON object with every figure. Usage::

    python benchmarks/vmas_navigation.py --frames 60000 --seed 0
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_average, machine, print_json_line, print_table
from env.adapters import VmasEnv
from training.config import PPOConfig, load_config
from training.trainer import MAPPOTrainer, seed_everything

Policy = Callable[[torch.Tensor], torch.Tensor]  # obs [B, N, D] -> actions [B, N] int64


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=60_000, help="frame budget of each learner (multiple of 6000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-seed", type=int, default=1000)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits a small shared CPU)")
    p.add_argument("--only", choices=("both", "ours", "torchrl"), default="both")
    p.add_argument("--out", type=Path, default=Path("runs/bench/vmas_navigation.png"), help="PNG of both curves")
    h = p.add_argument_group("tutorial hyper-parameters")
    h.add_argument("--frames-per-batch", type=int, default=6000)
    h.add_argument("--max-steps", type=int, default=100)
    h.add_argument("--n-agents", type=int, default=3)
    h.add_argument("--num-epochs", type=int, default=30)
    h.add_argument("--minibatch-size", type=int, default=400)
    h.add_argument("--lr", type=float, default=3e-4)
    h.add_argument("--max-grad-norm", type=float, default=1.0)
    h.add_argument("--clip-epsilon", type=float, default=0.2)
    h.add_argument("--gamma", type=float, default=0.99)
    h.add_argument("--lmbda", type=float, default=0.9)
    h.add_argument("--entropy-eps", type=float, default=1e-4)
    args = p.parse_args(argv)
    args.num_envs = args.frames_per_batch // args.max_steps
    args.n_iters = max(1, args.frames // args.frames_per_batch)
    return args


# ------------------------------------------------------------------------ ours
def our_overrides(a: argparse.Namespace) -> list[str]:
    """The tutorial's hyper-parameters in our config's terms."""
    rollout_len = a.frames_per_batch // a.num_envs
    return [f"seed={a.seed}", "device=cpu", "network.hidden=[256,256]", "network.share_params=true",
            "network.centralised_critic=true", f"ppo.rollout_len={rollout_len}",
            f"ppo.total_steps={a.n_iters * rollout_len}", f"ppo.lr={a.lr}", "ppo.anneal_lr=false",
            f"ppo.gamma={a.gamma}", f"ppo.gae_lambda={a.lmbda}", f"ppo.update_epochs={a.num_epochs}",
            f"ppo.num_minibatches={a.frames_per_batch // a.minibatch_size}", f"ppo.clip_coef={a.clip_epsilon}",
            f"ppo.ent_coef={a.entropy_eps}", f"ppo.max_grad_norm={a.max_grad_norm}", "ppo.norm_adv=false",
            "ppo.vf_coef=1.0", "ppo.clip_vloss=false",
            # the tutorial has none of these (fields of newer configs only)
            *[f"ppo.{k}={v}" for k, v in (("norm_value", "false"), ("target_kl", "null"), ("ent_coef_end", "null"))
              if k in PPOConfig.model_fields]]


def train_ours(a: argparse.Namespace) -> tuple[dict[str, Any], Policy]:
    seed_everything(a.seed)
    start = time.perf_counter()
    env = VmasEnv("navigation", num_worlds=a.num_envs, seed=a.seed, max_steps=a.max_steps, n_agents=a.n_agents)
    trainer = MAPPOTrainer(load_config(None, our_overrides(a)), env)
    history = trainer.train(on_iteration=lambda m: print(
        f"[ours] iteration {m['iteration']}: episode reward {m['episode_reward']:.3f}", file=sys.stderr, flush=True))
    wall = time.perf_counter() - start
    actor = trainer.actor.eval()

    def policy(obs: torch.Tensor) -> torch.Tensor:
        return actor(obs).argmax(-1)

    curve = [m["episode_reward"] for m in history]
    return {"wall_s": wall, "frames": len(history) * a.frames_per_batch, "curve": curve}, policy


# --------------------------------------------------------------------- TorchRL
def train_torchrl(a: argparse.Namespace) -> tuple[dict[str, Any], Policy]:
    """The tutorial's pipeline with a categorical actor (see the module docstring)."""
    from tensordict.nn import TensorDictModule
    from torchrl import collectors
    from torchrl.data.replay_buffers import ReplayBuffer
    from torchrl.data.replay_buffers.samplers import SamplerWithoutReplacement
    from torchrl.data.replay_buffers.storages import LazyTensorStorage
    from torchrl.envs import RewardSum, TransformedEnv
    from torchrl.envs.libs.vmas import VmasEnv as TorchRLVmasEnv
    from torchrl.modules import MultiAgentMLP, ProbabilisticActor
    from torchrl.objectives import ClipPPOLoss, ValueEstimators

    logging.getLogger("torchrl").setLevel(logging.WARNING)  # its INFO lines would go to stdout
    collector_cls = getattr(collectors, "SyncDataCollector", None) or collectors.Collector
    seed_everything(a.seed)
    start = time.perf_counter()
    env = TorchRLVmasEnv(scenario="navigation", num_envs=a.num_envs, continuous_actions=False, max_steps=a.max_steps,
                         device="cpu", seed=a.seed, n_agents=a.n_agents)
    env = TransformedEnv(env, RewardSum(in_keys=[env.reward_key], out_keys=[("agents", "episode_reward")]))
    n_obs = env.observation_spec["agents", "observation"].shape[-1]
    n_actions = env.full_action_spec_unbatched[env.action_key].space.n
    policy_net = MultiAgentMLP(n_agent_inputs=n_obs, n_agent_outputs=n_actions, n_agents=a.n_agents,
                               centralised=False, share_params=True, depth=2, num_cells=256,
                               activation_class=torch.nn.Tanh)
    policy = ProbabilisticActor(
        TensorDictModule(policy_net, in_keys=[("agents", "observation")], out_keys=[("agents", "logits")]),
        spec=env.full_action_spec_unbatched, in_keys=[("agents", "logits")], out_keys=[env.action_key],
        distribution_class=torch.distributions.Categorical, return_log_prob=True,
        log_prob_key=("agents", "sample_log_prob"))
    critic_net = MultiAgentMLP(n_agent_inputs=n_obs, n_agent_outputs=1, n_agents=a.n_agents, centralised=True,
                               share_params=True, depth=2, num_cells=256, activation_class=torch.nn.Tanh)
    critic = TensorDictModule(critic_net, in_keys=[("agents", "observation")], out_keys=[("agents", "state_value")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # 0.14 asks about auto-registering an InitTracker
        collector = collector_cls(env, policy, device="cpu", storing_device="cpu", frames_per_batch=a.frames_per_batch,
                                  total_frames=a.n_iters * a.frames_per_batch)
    replay_buffer = ReplayBuffer(storage=LazyTensorStorage(a.frames_per_batch, device="cpu"),
                                 sampler=SamplerWithoutReplacement(), batch_size=a.minibatch_size)
    loss_module = ClipPPOLoss(actor_network=policy, critic_network=critic, clip_epsilon=a.clip_epsilon,
                              entropy_coeff=a.entropy_eps, normalize_advantage=False)
    loss_module.set_keys(reward=env.reward_key, action=env.action_key, value=("agents", "state_value"),
                         done=("agents", "done"), terminated=("agents", "terminated"),
                         sample_log_prob=("agents", "sample_log_prob"))
    loss_module.make_value_estimator(ValueEstimators.GAE, gamma=a.gamma, lmbda=a.lmbda)
    gae = loss_module.value_estimator
    optim = torch.optim.Adam(loss_module.parameters(), a.lr)
    curve: list[float] = []
    frames = 0
    for data in collector:
        shape = data.get(("next", env.reward_key)).shape
        for key in ("done", "terminated"):  # the per-world flags, expanded to the agent dim
            data.set(("next", "agents", key), data.get(("next", key)).unsqueeze(-1).expand(shape))
        with torch.no_grad():
            gae(data, params=loss_module.critic_network_params,
                target_params=loss_module.target_critic_network_params)
        frames += data.numel()
        replay_buffer.extend(data.reshape(-1))
        for _ in range(a.num_epochs):
            for _ in range(a.frames_per_batch // a.minibatch_size):
                loss_vals = loss_module(replay_buffer.sample())
                loss = loss_vals["loss_objective"] + loss_vals["loss_critic"] + loss_vals["loss_entropy"]
                loss.backward()
                torch.nn.utils.clip_grad_norm_(loss_module.parameters(), a.max_grad_norm)
                optim.step()
                optim.zero_grad()
        collector.update_policy_weights_()
        done = data.get(("next", "agents", "done"))
        curve.append(data.get(("next", "agents", "episode_reward"))[done].mean().item())
        print(f"[torchrl] iteration {len(curve)}: episode reward {curve[-1]:.3f}", file=sys.stderr, flush=True)
    collector.shutdown()
    wall = time.perf_counter() - start

    def greedy(obs: torch.Tensor) -> torch.Tensor:
        return policy_net(obs).argmax(-1)

    return {"wall_s": wall, "frames": frames, "curve": curve}, greedy


# ------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(policy: Policy | None, a: argparse.Namespace) -> dict[str, float]:
    """Greedy rollout of ``policy`` (uniform random if None) for one episode in each of ``num_envs`` seeded worlds.

    Returns the mean episode reward per agent and the fraction of episodes that ended with every agent
    on its goal (VMAS's ``done``), over each world's first episode.
    """
    env = VmasEnv("navigation", num_worlds=a.num_envs, seed=a.eval_seed, max_steps=a.max_steps, n_agents=a.n_agents)
    gen = torch.Generator().manual_seed(a.eval_seed)
    out = env.reset(seed=a.eval_seed)
    ret = torch.zeros(a.num_envs)
    live = torch.ones(a.num_envs, dtype=torch.bool)
    success = torch.zeros(a.num_envs, dtype=torch.bool)
    for _ in range(a.max_steps):
        if policy is None:
            action = torch.randint(env.num_actions, (a.num_envs, env.num_routers), generator=gen)
        else:
            action = policy(out.obs)
        out = env.step(action)
        ret += out.reward.mean(-1) * live
        success |= out.terminated & live
        live &= ~out.done
    return {"eval_reward": ret.mean().item(), "eval_success": success.float().mean().item()}


def plot(results: dict[str, dict[str, Any]], a: argparse.Namespace) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot([(i + 1) * a.frames_per_batch for i in range(len(r["curve"]))], r["curve"], marker="o", label=name)
    ax.set_xlabel("frames (world steps)")
    ax.set_ylabel("mean episode reward per agent")
    ax.set_title(f"VMAS navigation, {a.n_agents} agents, discrete actions, seed {a.seed}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    a.out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    a = parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(a.threads)
    results: dict[str, dict[str, Any]] = {}
    trainers = {"ours": train_ours, "torchrl": train_torchrl}
    for name in (("ours", "torchrl") if a.only == "both" else (a.only,)):
        r, policy = trainers[name](a)
        r["final_reward"] = r["curve"][-1]
        r |= evaluate(policy, a)
        results[name] = r
    random = evaluate(None, a)
    plot(results, a)
    print(f"VMAS navigation, {a.n_agents} agents, discrete actions, {a.num_envs} worlds x {a.max_steps} steps per "
          f"iteration, {a.n_iters} iterations, seed {a.seed}, torch threads {a.threads}; plot: {a.out}")
    rows = [[n, r["frames"], r["final_reward"], r["eval_reward"], r["eval_success"], r["wall_s"],
             r["frames"] / r["wall_s"]] for n, r in results.items()]
    rows.append(["random policy", 0, float("nan"), random["eval_reward"], random["eval_success"], 0.0, float("nan")])
    print_table(["learner", "frames", "train reward (last iter)", "greedy eval reward", "eval success",
                 "wall s", "frames/s"], rows)
    ratios: dict[str, float] = {}
    if len(results) == 2:
        ours, ref = results["ours"], results["torchrl"]
        ratios = {"train_reward": ours["final_reward"] / ref["final_reward"],
                  "eval_reward": ours["eval_reward"] / ref["eval_reward"],
                  "wall_time": ours["wall_s"] / ref["wall_s"]}
        print(f"ours/torchrl: train reward {ratios['train_reward']:.3f}, greedy eval reward "
              f"{ratios['eval_reward']:.3f}, wall time {ratios['wall_time']:.3f}")
    figures = {"benchmark": "vmas_navigation", "scenario": "navigation", "n_agents": a.n_agents,
               "continuous_actions": False, "frames": a.n_iters * a.frames_per_batch, "seed": a.seed,
               "eval_seed": a.eval_seed, "hyper": {k: getattr(a, k) for k in (
                   "frames_per_batch", "num_envs", "max_steps", "num_epochs", "minibatch_size", "lr",
                   "max_grad_norm", "clip_epsilon", "gamma", "lmbda", "entropy_eps")},
               "ours_config": our_overrides(a), "results": results, "random_policy": random,
               "ratios_ours_over_torchrl": ratios,
               "notes": ["torchrl pipeline runs on pure-Python torchrl (compiled extension unused)",
                         "Collector used for SyncDataCollector (renamed in torchrl 0.14)",
                         "torchrl VmasEnv treats the time limit as terminal (no bootstrap); ours bootstraps"],
               "machine": machine(load_start)}
    print_json_line(figures)
    return figures


if __name__ == "__main__":
    main()
