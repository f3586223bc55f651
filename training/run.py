"""``agent-router train``: data -> embeddings -> PromptEnv -> MAPPO -> eval -> checkpoint."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from env.prompt_env import PromptEnv
from training.checkpoint import Policy, save_checkpoint
from training.config import TrainConfig
from training.data import EmbeddedSplits, load_splits
from training.evaluate import evaluate
from training.plots import plot_reward_curve
from training.trainer import MAPPOTrainer, seed_everything


def build_env(cfg: TrainConfig, splits: EmbeddedSplits, device: str, split: str = "train") -> PromptEnv:
    """PromptEnv over the embedded prompts of ``split``."""
    ds = splits.splits[split]
    return PromptEnv(splits.embeddings(split), ds.quality, ds.cost_usd, ds.capacities, cfg.env,
                     device=device, seed=cfg.seed, validate_actions=False)


def checkpoint_meta(cfg: TrainConfig, splits: EmbeddedSplits, env: PromptEnv,
                    eval_metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``policy.json`` content of a checkpoint trained with ``cfg`` (see training.checkpoint)."""
    ds = splits.dataset
    return {
        "agents": ds.agent_names,
        "agent_specs": [a.model_dump() for a in ds.agents],
        "capacities": ds.capacities,
        "embedding": {"model": splits.embedder.model_id, "dim": env.embed_dim},
        "obs_layout": {
            "obs_dim": env.obs_dim,
            "num_routers": env.num_routers,
            "load_clip": cfg.env.load_clip,
            "include_agent_id": cfg.env.include_agent_id,
            "parts": ["embedding", "load", *(["agent_id"] if cfg.env.include_agent_id else [])],
        },
        "network": cfg.network.model_dump(mode="json"),
        "training": cfg.model_dump(mode="json"),
        "eval": eval_metrics,
        "data": {"fingerprint": ds.fingerprint(), "source": ds.source, "prompts": len(ds), "watermark": None},
        "runtime": {"torch": torch.__version__, "python": platform.python_version()},
    }


def run_training(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train a policy as configured and write its artefacts.

    Writes ``cfg.out_dir/metrics.jsonl`` (one JSON object per iteration),
    ``cfg.out_dir/reward_curve.png``, ``cfg.out_dir/eval.json`` and a new checkpoint version under
    ``cfg.checkpoint_dir``.

    Returns:
        The new checkpoint's directory.

    Raises:
        DataError: bad dataset; UserError: bad device or model.
    """
    device = cfg.resolve_device()
    seed_everything(cfg.seed)
    splits = load_splits(cfg, device=device)
    env = build_env(cfg, splits, device)
    trainer = MAPPOTrainer(cfg, env)
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = out_dir / "metrics.jsonl"
    bar = tqdm(total=trainer.num_iterations, desc=f"MAPPO on {device}", unit="it", disable=not progress)
    with metrics_path.open("w", encoding="utf-8") as metrics_file:

        def on_iteration(m: dict[str, Any]) -> None:
            metrics_file.write(json.dumps(m) + "\n")
            metrics_file.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.3f}", quality=f"{m['quality']:.3f}",
                            kl=f"{m['approx_kl']:.4f}", ev=f"{m['explained_variance']:.2f}")

        history = trainer.train(on_iteration)
    bar.close()
    plot_reward_curve(history, out_dir / "reward_curve.png")
    meta = checkpoint_meta(cfg, splits, env, eval_metrics={})
    policy = Policy(out_dir, meta, trainer.actor.eval(), trainer.critic.eval())
    meta["eval"] = {"val": evaluate(policy, splits.splits["train"], splits.splits["val"],
                                    splits.embeddings("val"), cfg.env.cost_weight)}
    (out_dir / "eval.json").write_text(json.dumps(meta["eval"], indent=2), encoding="utf-8")
    return save_checkpoint(cfg.checkpoint_dir, trainer.actor, trainer.critic, meta)
