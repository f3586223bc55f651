"""``agent-router eval`` and ``calibrate``: a checkpoint scored on a dataset split, and the cost
preference that meets a target."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from cli.options import SetOpt, check_split
from contract.errors import UserError


def eval_(
    checkpoint: Annotated[Path, typer.Option(help="Version directory, or a directory of versions (newest).")],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="Config of the data (default: the checkpoint's own).")] = None,
    overrides: SetOpt = None,
    cost_weight: Annotated[float | None, typer.Option(help="Reward per USD (default: the checkpoint's).")] = None,
    curve: Annotated[list[Path] | None, typer.Option(
        help="More checkpoints for the policy's cost-quality curve (repeatable): a version directory, or a "
             "directory whose every version is a point (e.g. one per env.cost_weight).")] = None,
    capacity: Annotated[list[str] | None, typer.Option(
        help="Override an agent's capacity for the capacity-limited table, NAME=N requests per env step "
             "(or NAME=none); repeatable.")] = None,
    seed: Annotated[int | None, typer.Option(
        help="Seed of the MLP and the capacity env (default: the config's).")] = None,
    steps: Annotated[int | None, typer.Option(help="Env steps per router in the capacity table.", min=1)] = None,
    plot_dir: Annotated[Path | None, typer.Option(help="Write pareto.png and per_task.png here.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Score a checkpoint on a dataset split against baselines, curves and capacity limits.

    Baselines: random, best single agent, cheapest, oracle, kNN and MLP on the same embeddings, the
    Zero router (mixtures of single agents), and in PromptEnv (when any agent has a capacity) a
    load-aware greedy rule. Figures: mean quality, USD per 1k requests, reward, AIQ (RouterBench),
    per task; APGR and CPT(50%/80%) (RouteLLM) when there are two agents.
    """
    from policy.checkpoint import load_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits
    from training.evaluation.plots import write_plots
    from training.evaluation.report import (
        format_report,
        load_curve_policies,
        parse_capacity_overrides,
        run_eval,
        to_json,
    )

    check_split(split)
    policy = load_checkpoint(checkpoint)
    cfg = checkpoint_config(policy.meta, config, overrides)
    splits = load_splits(cfg)
    if splits.dataset.agent_names != policy.agents:
        raise UserError(f"{cfg.data.agents}: agents {splits.dataset.agent_names} do not match the "
                        f"checkpoint's {policy.agents}")
    caps = parse_capacity_overrides(capacity, policy.agents)
    capacities = [caps.get(a.name, a.capacity) for a in splits.dataset.agents]
    curve_policies = load_curve_policies(curve or [], policy.agents)
    weight = cfg.env.cost_weight if cost_weight is None else cost_weight
    report = run_eval(policy, splits.splits["train"], splits.splits[split], splits.embeddings("train"),
                      splits.embeddings(split), weight, env_config=cfg.env, capacities=capacities,
                      curve_policies=curve_policies, seed=cfg.seed if seed is None else seed, steps=steps,
                      split_name=split)
    if plot_dir is not None:
        report["plots"] = [str(p) for p in write_plots(report, plot_dir)]
    typer.echo(to_json(report) if as_json else format_report(report))


def calibrate(
    checkpoint: Annotated[Path, typer.Option(help="Version directory, or a directory of versions (newest).")],
    target_cost_usd_per_1k: Annotated[float | None, typer.Option(
        help="Mean cost at most this, USD per 1,000 requests.")] = None,
    target_share: Annotated[str | None, typer.Option(
        help="AGENT=P: at most the fraction P of requests to AGENT (RouteLLM's calibration).")] = None,
    split: Annotated[str, typer.Option(help="train, val or test.")] = "val",
    config: Annotated[Path | None, typer.Option("--config", "-c",
                                                help="Config of the data (default: the checkpoint's own).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Find the cost_weight at which a policy of every trade-off meets a cost or traffic target on
    the validation split, and print it, ready for ROUTER_COST_WEIGHT."""
    from dataclasses import asdict

    from policy.checkpoint import load_checkpoint
    from training.calibrate import calibrate as run_calibration
    from training.config import checkpoint_config
    from training.data import load_splits

    check_split(split)
    share = None
    if target_share is not None:
        agent, sep, value = target_share.rpartition("=")
        try:
            share = (agent, float(value)) if sep and agent else None
        except ValueError:
            share = None
        if share is None:
            raise UserError(f"--target-share must be AGENT=P with P a fraction, not {target_share!r}")
    policy = load_checkpoint(checkpoint)
    splits = load_splits(checkpoint_config(policy.meta, config, None))
    result = run_calibration(policy, splits.splits[split], splits.embeddings(split), target_cost_usd_per_1k, share)
    if as_json:
        typer.echo(json.dumps(asdict(result) | {"split": split, "version": policy.version}))
        return
    typer.echo(f"target: {result.target} on the {split} split ({result.prompts} prompts)")
    typer.echo(f"cost_weight {result.cost_weight:.6g}: quality {result.quality:.4f}, "
               f"{result.cost_usd_per_1k:.4f} USD per 1k requests; shares "
               + ", ".join(f"{a} {p:.3f}" for a, p in result.share.items()))
    typer.echo(f"ROUTER_COST_WEIGHT={result.cost_weight:.6g}")
