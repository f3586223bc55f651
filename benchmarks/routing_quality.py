"""Routing quality: every router x dataset x cost trade-off, from one checkpoint per dataset and seed.

For each dataset config (``--configs``, default the three shipped ones: llmrouter-dc, routellm-evals
and the capacity-limited llmrouter-dc) and each seed (``--seeds``) it trains the config with that
seed (or takes ``--checkpoint-root/<config stem>/seed<k>`` when it exists: the newest version
there), then scores it on ``--split`` (``test`` for the final figures; ``val`` while choosing):

* at the config's ``cost_weight``: policy, kNN, MLP, best single agent and oracle quality, USD/1k
  and reward, and AIQ (RouterBench, arXiv 2403.12031) of each router's curve;
* at every ``λ`` of the baselines' sweep (``training.evaluation.report``'s grid, from the kNN's
  predictions): each router's reward ``quality - λ * cost_usd`` (the policy at ``cost_weight = λ``
  when it is a policy of every trade-off, else at its own cost weight), and of the MLP baseline
  refitted with another seed (``seed + 10``), whose margin against max(kNN, MLP) is how far apart
  two fits of one baseline land by chance: the floor the every-λ goal's margins are read against;
* two agents: APGR and CPT(50%) of the policy (RouteLLM, arXiv 2406.18665): of its λ sweep, or
  for a policy of one cost weight of RouteLLM's threshold on ``π(strong)``;
* agents with a capacity: reward in PromptEnv against the load-aware greedy rule.

Goals of issue 22 for a policy of every trade-off (``configs/tradeoffs.yaml``,
``configs/routellm-tradeoffs.yaml``): reward at each ``λ`` >= max(kNN, MLP) - 0.003, and AIQ
above both. Goals (issue 11), printed as ratios: llmrouter-dc policy quality >= max(kNN, MLP) + 0.02 at
``cost_weight`` 0, policy reward >= kNN's and MLP's at every ``λ``, policy AIQ above every
baseline's; routellm-evals APGR >= 0.65 and CPT(50%) <= 30%; capacity reward >= 1.1x load-aware
greedy. Mean and standard deviation over the seeds.

Usage::

    .venv/bin/python benchmarks/routing_quality.py [--seeds 0 1 2] [--split test]
        [--configs configs/default.yaml configs/routellm.yaml configs/capacity.yaml] [--work runs/bench-quality]

Prints the tables, then as its last line one JSON object with every figure and ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402

DEFAULT_CONFIGS = ("configs/default.yaml", "configs/routellm.yaml", "configs/capacity.yaml")
REFIT_SEED_OFFSET = 10  # the refitted MLP baseline's seed is the run's + this


def _checkpoint(config: Path, seed: int, work: Path, checkpoint_root: Path | None) -> tuple[Path, float | None]:
    """The checkpoint of ``config`` at ``seed``: reused from ``checkpoint_root`` or trained now
    (returns the training wall time in s)."""
    from training.config import load_config
    from training.run import run_training

    if checkpoint_root is not None:
        given = checkpoint_root / config.stem / f"seed{seed}"
        if given.is_dir():
            return given, None
    cfg = load_config(config, [f"seed={seed}", f"out_dir={work / config.stem / f'seed{seed}' / 'run'}",
                               f"checkpoint_dir={work / config.stem / f'seed{seed}' / 'checkpoints'}",
                               "tensorboard=false"])
    start = time.perf_counter()
    path = run_training(cfg, progress=False)
    return path, time.perf_counter() - start


def _lambda_rewards(policy, split, embeddings, predictors, grid: np.ndarray) -> dict[str, list[float]]:
    """Each router's mean reward ``quality - λ * cost_usd`` at every ``λ`` of ``grid``."""
    from training.evaluation.classifiers import route_wtp
    from training.evaluation.offline import policy_choices

    rows = np.arange(len(split))
    q, c = split.quality, split.cost_usd
    preds = {name: p.predict(embeddings) for name, p in predictors.items()}
    fixed = None if policy.layout.cost_preference else policy_choices(policy, embeddings, split.prompt_tokens)
    out: dict[str, list[float]] = {"policy": [], **{name: [] for name in preds}, "oracle": []}
    for lam in grid:
        lam = float(lam)
        choice = fixed if fixed is not None else policy_choices(policy, embeddings, split.prompt_tokens,
                                                                cost_weight=lam)
        out["policy"].append(float((q[rows, choice] - lam * c[rows, choice]).mean()))
        for name, (q_hat, c_hat) in preds.items():
            ch = route_wtp(q_hat, c_hat, lam)
            out[name].append(float((q[rows, ch] - lam * c[rows, ch]).mean()))
        ch = route_wtp(q, c, lam)
        out["oracle"].append(float((q[rows, ch] - lam * c[rows, ch]).mean()))
    return out


def score(config: Path, seed: int, checkpoint: Path, split_name: str) -> dict[str, Any]:
    """The figures of one checkpoint on ``split_name`` (see the module docstring)."""
    from policy.checkpoint import load_checkpoint
    from training.config import checkpoint_config
    from training.data import load_splits
    from training.evaluation.classifiers import fit_mlp, fit_predictors
    from training.evaluation.report import lambda_grid, run_eval

    policy = load_checkpoint(checkpoint)
    cfg = checkpoint_config(policy.meta, config, None)
    splits = load_splits(cfg)
    train, split = splits.splits["train"], splits.splits[split_name]
    emb_train, emb = splits.embeddings("train"), splits.embeddings(split_name)
    weight = cfg.env.cost_weight
    predictors = fit_predictors(emb_train, train, seed=seed, cost_weight=weight)
    report = run_eval(policy, train, split, emb_train, emb, weight, env_config=cfg.env,
                      capacities=split.capacities, seed=seed, split_name=split_name, predictors=predictors)
    grid = lambda_grid(predictors, emb, 32)
    refit = fit_mlp(emb_train, train, seed=seed + REFIT_SEED_OFFSET)
    lam = _lambda_rewards(policy, split, emb, {**predictors, "mlp_refit": refit}, grid)
    r = report["routers"]
    figures: dict[str, Any] = {
        "config": str(config), "seed": seed, "version": policy.version, "split": split_name, "prompts": len(split),
        "cost_weight": weight,
        "routers": {name: {k: r[name].get(k) for k in ("quality", "cost_usd_per_1k", "reward", "aiq")}
                    for name in ("policy", "knn", "mlp", "best_single", "oracle", "zero_router") if name in r},
        "lambda": [float(x) for x in grid], "lambda_reward": lam,
    }
    margins = _margins(lam, "policy")
    figures["lambda_wins"] = sum(x >= 0 for x in margins)
    figures["lambda_within_0.003"] = sum(x >= -0.003 for x in margins)  # issue 22: every λ from one checkpoint
    figures["lambda_worst_margin"] = min(margins)
    refit_margins = _margins(lam, "mlp_refit")
    figures["lambda_refit_within_0.003"] = sum(x >= -0.003 for x in refit_margins)
    figures["lambda_refit_worst_margin"] = min(refit_margins)
    figures["quality_margin"] = r["policy"]["quality"] - max(r["knn"]["quality"], r["mlp"]["quality"])
    aiq_base = max(r[n]["aiq"] for n in ("knn", "mlp", "zero_router", "best_single", "cheapest") if n in r)
    figures["aiq_margin"] = r["policy"]["aiq"] - aiq_base
    if "apgr" in report:
        # a policy of every trade-off: its λ sweep; one of one cost weight: RouteLLM's threshold on π(strong)
        curve = "policy" if policy.layout.cost_preference else "policy_threshold"
        figures["apgr_curve"] = curve
        figures["apgr"], figures["cpt50"] = report["apgr"][curve], report["cpt"][curve]["50"]
        figures["apgr_baselines"] = {n: report["apgr"][n] for n in ("knn", "mlp") if n in report["apgr"]}
    cap = report.get("capacity", {}).get("routers", {})
    if "policy" in cap and "load_greedy" in cap:
        figures["capacity_ratio"] = cap["policy"]["reward"] / cap["load_greedy"]["reward"]
        figures["capacity"] = {n: cap[n]["reward"] for n in ("policy", "load_greedy", "knn", "oracle") if n in cap}
    return figures


def _margins(lam: dict[str, list[float]], name: str) -> list[float]:
    """Router ``name``'s reward minus max(kNN, MLP) at each λ of the sweep (issue 22's every-λ goal)."""
    return [r - max(k, m) for r, k, m in zip(lam[name], lam["knn"], lam["mlp"], strict=True)]


def _mean_sd(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None]
    if not values:
        return float("nan"), float("nan")
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def summarise(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sd over seeds per config, with each goal's ratio and whether it is met."""
    out: dict[str, Any] = {}
    for config in dict.fromkeys(r["config"] for r in results):
        rs = [r for r in results if r["config"] == config]
        summary: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for key in ("quality_margin", "aiq_margin", "lambda_worst_margin", "lambda_wins", "lambda_within_0.003",
                    "lambda_refit_worst_margin", "lambda_refit_within_0.003", "apgr", "cpt50",
                    "capacity_ratio"):
            if all(key in r for r in rs):
                summary[key] = dict(zip(("mean", "sd"), _mean_sd([r[key] for r in rs]), strict=True))
        for name in rs[0]["routers"]:
            for k in ("quality", "aiq"):
                summary[f"{name}_{k}"] = dict(zip(("mean", "sd"), _mean_sd([r["routers"][name][k] for r in rs]),
                                                  strict=True))
        goals: dict[str, Any] = {}
        if "apgr" in summary:
            goals["apgr_ratio"] = summary["apgr"]["mean"] / 0.65
            # CPT in percent of calls to the strong agent; the goal is <= 30
            goals["cpt50_ratio"] = 30.0 / summary["cpt50"]["mean"] if summary["cpt50"]["mean"] else float("inf")
        elif "capacity_ratio" in summary:
            goals["capacity_ratio_vs_1.1"] = summary["capacity_ratio"]["mean"] / 1.1
        else:
            goals["quality_margin_minus_0.02"] = summary["quality_margin"]["mean"] - 0.02
            goals["lambda_points_won"] = f"{sum(r['lambda_wins'] for r in rs)}/{sum(len(r['lambda']) for r in rs)}"
            goals["aiq_margin"] = summary["aiq_margin"]["mean"]
        # issue 22, every λ from one checkpoint: reward >= max(kNN, MLP) - 0.003 at each λ, AIQ >= both
        goals["lambda_points_within_0.003"] = (f"{sum(r['lambda_within_0.003'] for r in rs)}/"
                                               f"{sum(len(r['lambda']) for r in rs)}")
        goals["lambda_worst_margin_plus_0.003"] = summary["lambda_worst_margin"]["mean"] + 0.003
        summary["goals"] = goals
        out[config] = summary
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--split", default="test", choices=("val", "test"))
    ap.add_argument("--work", type=Path, default=Path("runs/bench-quality"))
    ap.add_argument("--checkpoint-root", type=Path, default=None,
                    help="reuse <root>/<config stem>/seed<k> (a checkpoint directory) where it exists")
    args = ap.parse_args(argv)
    start_load = load_average()
    results = []
    for config in map(Path, args.configs):
        for seed in args.seeds:
            path, train_s = _checkpoint(config, seed, args.work, args.checkpoint_root)
            figures = score(config, seed, path, args.split) | {"train_s": train_s}
            results.append(figures)
            print(f"{config.stem} seed {seed}: policy quality {figures['routers']['policy']['quality']:.4f}, "
                  f"kNN {figures['routers']['knn']['quality']:.4f}, MLP {figures['routers']['mlp']['quality']:.4f}, "
                  f"λ points won {figures['lambda_wins']}/{len(figures['lambda'])}"
                  + (f", trained in {train_s:.0f} s" if train_s else ""), flush=True)
    for r in results:
        print(f"\n{Path(r['config']).stem} seed {r['seed']} on {r['split']} ({r['prompts']} prompts): reward by λ")
        lam = r["lambda_reward"]
        print_table(["λ", *lam], [[f"{x:.4g}", *(lam[n][i] for n in lam)] for i, x in enumerate(r["lambda"])])
    summary = summarise(results)
    print("\nsummary (mean ± sd over seeds)")
    rows = []
    for config, s in summary.items():
        for key, v in s.items():
            if isinstance(v, dict) and "mean" in v:
                rows.append([Path(config).stem, key, v["mean"], v["sd"]])
        for key, v in s["goals"].items():
            rows.append([Path(config).stem, f"goal {key}", v, ""])
    print_table(["config", "figure", "mean", "sd"], rows)
    print_json_line({"benchmark": "routing_quality", "split": args.split, "machine": machine(start_load),
                     "summary": summary, "runs": results})


if __name__ == "__main__":
    main()
