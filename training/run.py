"""``agent-router train``: data -> embeddings -> PromptEnv -> MAPPO -> eval -> checkpoint."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from contract.errors import UserError
from contract.pricing import expected_costs_usd
from env.encoders import vectors_of
from env.prompt_env import PromptEnv
from policy.artefact import Policy
from policy.checkpoint import save_checkpoint
from training.config import TrainConfig
from training.data import EmbeddedSplits, load_splits
from training.distributed import DistContext, init_distributed, shutdown
from training.evaluation.offline import evaluate
from training.learning_curve import plot_reward_curve
from training.outcome_fit import train_outcome_policy
from training.resume import ResumeError, save_trainer_state, state_file
from training.serving_encoder import record_serving_encoder
from training.trainer import MAPPOTrainer, seed_everything
from training.validation import Validator


def build_env(cfg: TrainConfig, splits: EmbeddedSplits, device: str, split: str = "train") -> PromptEnv:
    """PromptEnv over the embedded prompts of ``split``."""
    ds = splits.splits[split]
    prices = {}
    if cfg.env.prompt_features:
        # the expected-cost features are scaled by the train split's mean, whichever split this is
        train = splits.splits["train"]
        scale = float(expected_costs_usd([a.price for a in train.agents], train.prompt_tokens).mean()) or 1.0
        prices = {"tokens": ds.prompt_tokens, "agent_prices": [a.price for a in ds.agents], "cost_scale_usd": scale}
    return PromptEnv(splits.embeddings(split), ds.quality, ds.cost_usd, ds.capacities, cfg.env,
                     device=device, seed=cfg.seed, validate_actions=False,
                     all_action_rewards=cfg.ppo.pg_estimator == "expected", **prices)


def checkpoint_meta(cfg: TrainConfig, splits: EmbeddedSplits, env: PromptEnv,
                    eval_metrics: dict[str, Any]) -> dict[str, Any]:
    """The ``policy.json`` content of a checkpoint trained with ``cfg`` (:class:`~contract.policy_meta.PolicyMeta`
    but the fields :func:`~policy.checkpoint.save_checkpoint` fills in)."""
    ds = splits.dataset
    return {
        "agents": ds.agent_names,
        "agent_specs": [a.model_dump() for a in ds.agents],
        "capacities": ds.capacities,
        "embedding": {"model": splits.embedder.model_id, "dim": env.embed_dim,
                      "encoder": vectors_of(splits.embedder.encoder),
                      "static_version": getattr(splits.embedder, "version", None)},
        "obs_layout": env.layout.model_dump(mode="json"),
        "network": cfg.network.model_dump(mode="json"),
        "training": cfg.model_dump(mode="json"),
        "eval": eval_metrics,
        "data": {"fingerprint": ds.fingerprint(), "source": ds.source, "prompts": len(ds), "watermark": None},
        "runtime": {"torch": torch.__version__, "python": platform.python_version()},
    }


def _tensorboard(out_dir: Path) -> Any:
    """A ``SummaryWriter`` of ``out_dir/tensorboard``.

    Raises:
        UserError: the ``tensorboard`` package is missing.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("tensorboard=true needs the tensorboard package (pip install tensorboard), "
                        "or set -s tensorboard=false") from None
    return SummaryWriter(str(out_dir / "tensorboard"))


def _rank_config(cfg: TrainConfig, ctx: DistContext) -> TrainConfig:
    """This rank's share of the worlds and its own seed (the recorded config stays ``cfg``)."""
    if not ctx.enabled:
        return cfg
    if cfg.env.num_worlds % ctx.world_size:
        raise UserError(f"env.num_worlds ({cfg.env.num_worlds}) must be divisible by the number of "
                        f"processes ({ctx.world_size})")
    env = cfg.env.model_copy(update={"num_worlds": cfg.env.num_worlds // ctx.world_size})
    return cfg.model_copy(update={"seed": cfg.seed + ctx.rank, "env": env})


def run_training(cfg: TrainConfig, progress: bool = True, resume_state: dict[str, Any] | None = None,
                 on_validation: Callable[[int, float], None] | None = None) -> Path | None:
    """Train a policy as configured and write its artefacts.

    Writes ``cfg.out_dir/metrics.jsonl`` (one JSON object per iteration, with ``val_*`` figures
    every ``eval_every`` iterations; appended to on resume), ``cfg.out_dir/tensorboard`` (with
    ``tensorboard``), ``cfg.out_dir/reward_curve.png``, ``cfg.out_dir/eval.json``, the resumable
    ``cfg.out_dir/trainer_state.pt`` (every ``save_every`` iterations and at the end) and a new
    checkpoint version under ``cfg.checkpoint_dir``. Under ``torchrun`` every rank trains on
    ``num_worlds / world_size`` worlds; rank 0 writes the metrics, plot, eval and checkpoint, and
    every rank its own trainer state.

    Args:
        cfg: the run's config.
        progress: show a progress bar.
        on_validation: called with ``(iteration, val_reward)`` after each validation (rank 0); an
            exception it raises ends the run (``agent-router tune`` prunes trials so).
        resume_state: a trainer state (:func:`training.resume.load_trainer_state`) to continue from.

    Returns:
        The new checkpoint's directory (None on ranks other than 0).

    Raises:
        DataError: bad dataset; UserError: bad device or model; ResumeError: a state that does not
            fit ``cfg``.
    """
    ctx, device = init_distributed(cfg.resolve_device())
    try:
        return _run(cfg, _rank_config(cfg, ctx), ctx, device, progress, resume_state, on_validation)
    finally:
        shutdown()


def _run(cfg: TrainConfig, rank_cfg: TrainConfig, ctx: DistContext, device: str, progress: bool,
         resume_state: dict[str, Any] | None, on_validation: Callable[[int, float], None] | None) -> Path | None:
    seed_everything(rank_cfg.seed)
    splits = load_splits(cfg, device=device)
    if ctx.enabled:  # rank 0 fills the embedding cache, the others then read it
        if not ctx.is_main:
            torch.distributed.barrier()
        splits.embeddings("train")
        if ctx.is_main:
            torch.distributed.barrier()
    env = build_env(rank_cfg, splits, device)
    if cfg.network.actor == "outcome":  # fitted on every agent's outcome, not trained by MAPPO
        if ctx.enabled:
            raise UserError("network.actor outcome is fitted in one process; run it without torchrun")
        return train_outcome_policy(cfg, splits, env.layout, checkpoint_meta(cfg, splits, env, eval_metrics={}))
    trainer = MAPPOTrainer(rank_cfg, env)
    if resume_state is not None:
        try:
            trainer.load_state_dict(resume_state)
        except (KeyError, RuntimeError, ValueError) as exc:
            raise ResumeError(f"trainer state does not fit this config: {str(exc).splitlines()[0]}") from None
    out_dir = Path(cfg.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state_path = state_file(out_dir, ctx.rank, ctx.world_size)
    config_dict = cfg.model_dump(mode="json")
    metrics_path = out_dir / "metrics.jsonl"
    bar = tqdm(total=trainer.num_iterations, initial=trainer.iteration, desc=f"MAPPO on {device}", unit="it",
               disable=not progress or not ctx.is_main)
    mode = "w"
    if resume_state is not None and ctx.is_main and metrics_path.is_file():
        # drop iterations logged after the state was saved: they are run again
        kept = [line for line in metrics_path.read_text(encoding="utf-8").splitlines()
                if line and json.loads(line)["iteration"] <= trainer.iteration]
        metrics_path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
        mode = "a"
    validator = None
    if cfg.eval_every and ctx.is_main:
        validator = Validator(env.layout, splits.splits["val"], splits.embeddings("val"), cfg.env.cost_weight,
                              cfg.eval_every)
    board = _tensorboard(out_dir) if cfg.tensorboard and ctx.is_main else None
    with open(metrics_path if ctx.is_main else os.devnull, mode, encoding="utf-8") as metrics_file:

        def on_iteration(m: dict[str, Any]) -> None:
            if validator is not None:
                m |= validator(trainer)
                if on_validation is not None and "val_reward" in m:
                    on_validation(m["iteration"], m["val_reward"])
            if board is not None:
                for key, value in m.items():
                    if isinstance(value, int | float) and key not in ("iteration", "agent_steps"):
                        board.add_scalar(key, value, global_step=m["agent_steps"])
            metrics_file.write(json.dumps(m) + "\n")
            metrics_file.flush()
            bar.update(1)
            bar.set_postfix(reward=f"{m['reward']:.3f}", kl=f"{m['approx_kl']:.4f}",
                            ev=f"{m['explained_variance']:.2f}")
            if cfg.save_every and trainer.iteration % cfg.save_every == 0:
                save_trainer_state(state_path, trainer.state_dict(), config_dict)

        trainer.train(on_iteration)
    bar.close()
    if board is not None:
        board.close()
    save_trainer_state(state_path, trainer.state_dict(), config_dict)
    if not ctx.is_main:
        return None
    history = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
    plot_reward_curve(history, out_dir / "reward_curve.png")
    selected = None
    if cfg.keep_best and validator is not None and validator.best is not None:
        validator.restore_best(trainer)
        selected = validator.best
    meta = checkpoint_meta(cfg, splits, env, eval_metrics={})
    meta["value_norm"] = trainer.value_norm.to_meta()
    policy = Policy.draft(out_dir, meta, trainer.actor.eval(), trainer.critic.eval())
    meta["eval"] = {"val": evaluate(policy, splits.splits["train"], splits.splits["val"],
                                    splits.embeddings("val"), cfg.env.cost_weight)}
    if selected is not None:
        meta["eval"]["selected"] = selected
    record_serving_encoder(meta, cfg, splits, policy)
    (out_dir / "eval.json").write_text(json.dumps(meta["eval"], indent=2), encoding="utf-8")
    return save_checkpoint(cfg.checkpoint_dir, trainer.actor, trainer.critic, meta)
