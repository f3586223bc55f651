"""Our MAPPO trainer on MPE simple_spread_v3 (N=3) in the four network layouts, on one frame budget.

Layouts: {shared, separate} actor/critic parameters x {MAPPO (centralised critic on the global
state, Yu et al. 2021, arXiv 2103.01955), IPPO (local critic)}. The env is PettingZoo's
``mpe2.simple_spread_v3.parallel_env(N=3, continuous_actions=False, max_cycles=25)`` (Lowe et al.
2017, arXiv 1706.02275), ``--worlds`` copies batched by :class:`env.adapters.PettingZooEnv`.

A frame is one step of one world (all N agents act), as in TorchRL. The reward reported is the mean
episode reward per agent (sum over an episode's 25 steps of the agents' mean reward) of the episodes
that finished in an iteration; "final" is its mean over the last 10% of the iterations.

Writes a PNG of reward vs frames for the four layouts, prints a table, and as its last line one JSON
object with every figure. Usage::

    python benchmarks/simple_spread_layouts.py --frames 100000 --worlds 32 --seed 0 --out runs/bench/spread.png
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import load_average, machine, print_json_line, print_table, smooth, tail_mean
from env.adapters import make_benchmark_env
from training.config import load_config
from training.trainer import MAPPOTrainer, seed_everything

LAYOUTS = (("mappo-shared", True, True), ("mappo-separate", True, False),
           ("ippo-shared", False, True), ("ippo-separate", False, False))
EPISODE_LEN = 25


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--frames", type=int, default=100_000, help="frames (world steps) per layout")
    p.add_argument("--worlds", type=int, default=32, help="env copies stepped together (B)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/bench/simple_spread_layouts.png"), help="PNG path")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 suits a small shared CPU)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra training-config overrides, e.g. --set ppo.lr=7e-4")
    return p.parse_args(argv)


def config_overrides(args: argparse.Namespace, centralised: bool, share: bool) -> list[str]:
    """The training config of one layout (tuned briefly on seed 0; see the module docstring)."""
    iterations = max(1, args.frames // (args.worlds * EPISODE_LEN))
    return [f"seed={args.seed}", "device=cpu", "network.hidden=[64,64]", f"ppo.rollout_len={EPISODE_LEN}",
            f"ppo.total_steps={iterations * EPISODE_LEN}", "ppo.lr=1e-3", "ppo.anneal_lr=false", "ppo.gamma=0.99",
            "ppo.gae_lambda=0.95", "ppo.update_epochs=4", "ppo.num_minibatches=4", "ppo.ent_coef=0.01",
            f"network.centralised_critic={str(centralised).lower()}", f"network.share_params={str(share).lower()}",
            *args.set]


def train_layout(args: argparse.Namespace, centralised: bool, share: bool) -> dict[str, Any]:
    """Train one layout; returns its reward curve, final reward and wall time."""
    cfg = load_config(None, config_overrides(args, centralised, share))
    seed_everything(args.seed)
    env = make_benchmark_env("pettingzoo:simple_spread_v3", num_worlds=args.worlds, seed=args.seed, N=3,
                             max_cycles=EPISODE_LEN)
    start = time.perf_counter()
    history = MAPPOTrainer(cfg, env).train()
    wall = time.perf_counter() - start
    rewards = [m["episode_reward"] for m in history]
    frames = [m["env_steps"] * args.worlds for m in history]
    return {"frames": frames[-1], "iterations": len(history), "first_reward": rewards[0],
            "final_reward": tail_mean(rewards), "best_reward_smoothed": max(smooth(rewards, 5)),
            "wall_s": wall, "curve_frames": frames, "curve_reward": rewards}


def plot(results: dict[str, dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.plot(r["curve_frames"], smooth(r["curve_reward"], 5), label=name)
    ax.set_xlabel("frames (world steps)")
    ax.set_ylabel("mean episode reward per agent")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    load_start = load_average()
    torch.set_num_threads(args.threads)
    results: dict[str, dict[str, Any]] = {}
    for name, centralised, share in LAYOUTS:
        results[name] = train_layout(args, centralised, share)
        r = results[name]
        print(f"[{name}] {r['frames']} frames in {r['wall_s']:.0f} s: reward {r['first_reward']:.2f} -> "
              f"{r['final_reward']:.2f}", file=sys.stderr, flush=True)
    plot(results, args.out, f"simple_spread_v3 N=3, {args.worlds} worlds, seed {args.seed} (5-iteration average)")
    print(f"simple_spread_v3 (N=3, 25-step episodes), {args.worlds} worlds, seed {args.seed}; plot: {args.out}")
    print_table(["layout", "frames", "first reward", "final reward", "best (smoothed)", "wall s", "frames/s"],
                [[n, r["frames"], r["first_reward"], r["final_reward"], r["best_reward_smoothed"], r["wall_s"],
                  r["frames"] / r["wall_s"]] for n, r in results.items()])
    figures = {"benchmark": "simple_spread_layouts", "env": "pettingzoo:simple_spread_v3", "n_agents": 3,
               "episode_len": EPISODE_LEN, "frames": args.frames, "worlds": args.worlds, "seed": args.seed,
               "plot": str(args.out), "threads": args.threads,
               "config": [o for o in config_overrides(args, True, True) if not o.startswith("network.c")
                          and not o.startswith("network.s")],
               "layouts": {n: {k: v for k, v in r.items() if not k.startswith("curve_")} for n, r in results.items()},
               "machine": machine(load_start)}
    print_json_line(figures)
    return figures


if __name__ == "__main__":
    main()
