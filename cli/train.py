"""``agent-router init``, ``train``, ``tune``, ``embed``: write a policy, from an agents file
alone or from a dataset with every agent's outcome."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from cli.options import ConfigOpt, SetOpt, train_config


def init(
    agents: Annotated[Path, typer.Option(help="The agents file (JSON or YAML): name, description, price, "
                                              "capacity, and optionally prior_quality, per agent.")],
    out: Annotated[Path, typer.Option(help="Checkpoint root to write the policy under.")] = Path("checkpoints"),
    cost_weight: Annotated[float, typer.Option(
        help="Reward per USD the learner will use: reward = quality - cost_weight * cost_usd.", min=0.0)] = 0.0,
    embedding_model: Annotated[str, typer.Option(help="Sentence embedding model of the prompts.")] = "all-MiniLM-L6-v2",
    cost_weight_max: Annotated[float | None, typer.Option(
        help="Serve every request's own cost_weight in [0, this] (USD^-1) from one policy, which learns each "
             "agent's quality and cost apart; --cost-weight is then the weight of a request that names none. "
             "Needs a price for every agent.", min=1e-9)] = None,
) -> None:
    """Write a serving policy from an agents file alone, with no outcome data (a cold start).

    The policy explores every agent from its first request (serve with explore on) and learns from
    the logged feedback, round after round of `agent-router retrain`. Use `agent-router train`
    instead to start from a dataset with every agent's outcome on each prompt.
    """
    from training.cold_start import init_policy

    path = init_policy(agents, out, embedding_model=embedding_model, cost_weight=cost_weight,
                       cost_weight_max=cost_weight_max)
    typer.echo(f"checkpoint: {path}")
    typer.echo(f"serve it: agent-router serve --checkpoint {out}; learn from feedback: agent-router retrain "
               f"--checkpoint {out} --every-records 200")


def train(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    resume: Annotated[Path | None, typer.Option(
        help="Run directory (out_dir) of a run to continue from its trainer_state.pt; its config is the "
             "base, --config/--set override it (e.g. -s ppo.total_steps=16000 to train longer).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a MAPPO router on a routing dataset and write a checkpoint.

    Writes metrics.jsonl, reward_curve.png, eval.json and trainer_state.pt to out_dir and a new
    version directory (policy.safetensors + policy.json) under checkpoint_dir. Under
    `torchrun --nproc_per_node P -m cli train ...` the worlds are split across P processes.
    """
    from training.config import load_config
    from training.distributed import launched_by_torchrun
    from training.resume import load_trainer_state, state_file
    from training.run import run_training
    from training.serving_encoder import describe

    state = None
    if resume is not None:
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        path = state_file(resume, rank, world) if resume.is_dir() else resume
        stored, state = load_trainer_state(path)
        cfg = load_config(config, overrides or [], base=stored)
    else:
        cfg = train_config(config, overrides)
    path = run_training(cfg, progress=not quiet, resume_state=state)
    if path is not None:
        typer.echo(f"checkpoint: {path}")
        serving = json.loads((path / "policy.json").read_text(encoding="utf-8"))["embedding"].get("serving")
        if serving:
            typer.echo(describe(serving))
        if cfg.network.actor == "outcome":
            typer.echo(f"eval: {Path(cfg.out_dir) / 'eval.json'}")
            return
        typer.echo(f"metrics: {Path(cfg.out_dir) / 'metrics.jsonl'}  curve: {Path(cfg.out_dir) / 'reward_curve.png'}"
                   + ("" if not launched_by_torchrun() else "  (rank 0's worlds)"))


def tune(
    config: ConfigOpt = None,
    overrides: SetOpt = None,
    trials: Annotated[int, typer.Option(min=1, help="Trials to run.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the TPE sampler.")] = 0,
    out: Annotated[Path, typer.Option(help="Directory of the trials' runs and study.json.")] = Path("runs/tune"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as one JSON object.")] = False,
) -> None:
    """Search the main hyper-parameters (Optuna: TPE sampler, median pruner), scored by each
    trial's greedy validation reward; prints the best as -s overrides for train."""
    from training.tune import run_tune

    result = run_tune(train_config(config, overrides), trials, out, seed=seed)
    if as_json:
        typer.echo(json.dumps(result.to_dict()))
        return
    for t in result.trials:
        value = "-" if t["value"] is None else f"{t['value']:.4f}"
        typer.echo(f"trial {t['number']:>3}  {t['state']:<8}  val_reward {value}")
    typer.echo(f"best val_reward {result.best_value:.4f}: agent-router train {' '.join(result.best_overrides)}")
    typer.echo(f"its checkpoint: {result.best_checkpoint}  (all trials: {out / 'study.json'})")


def embed(config: ConfigOpt = None, overrides: SetOpt = None) -> None:
    """Embed every prompt of the configured dataset into the on-disk cache."""
    from training.data import load_splits

    cfg = train_config(config, overrides)
    splits = load_splits(cfg)
    vecs = splits.embedder.encode(splits.dataset.prompts)
    typer.echo(f"{vecs.shape[0]} prompts x {vecs.shape[1]} dims cached in {cfg.embed.cache_dir} "
               f"({splits.embedder.encode_calls} model batches run)")
