"""Contextual-bandit stream benchmark: the bake-off protocol on full-information routing data.

The protocol of Bietti, Agarwal & Langford, "A Contextual Bandit Bake-off" (JMLR 22(133), 2021):
a dataset with every agent's outcome on every prompt is replayed as a bandit stream. For each
dataset setting and each shuffle seed, the prompts arrive once each in a seeded random order; a
learner (:class:`benchmarks.bandit_anchors.StreamLearner`) sees the prompt's context, picks an
*action* (an agent) with a *propensity*, and is told the *reward* of that action only::

    a, p = learner.act(ctx); r = quality[i, a] - cost_weight * cost_usd[i, a]; learner.learn(ctx, a, r, p)

Every learner gets a fresh instance per shuffle, constructed with that shuffle's seed. It is
scored by progressive validation: the running mean of the rewards it got on the first ``T``
prompts (``T`` = 250, 1000, 2000 and all), and the mean over the last 1000 prompts.

Rows:

* the anchors of ``benchmarks/bandit_anchors.py``: VW ``--cb_explore_adf`` with SquareCB, bagging
  (5) and epsilon-greedy (0.05); disjoint LinUCB (Li et al. 2010, arXiv 1003.0146); Beta-Bernoulli
  Thompson sampling per agent (global) and per k-means cluster of the embeddings; uniform random;
* ``agent-router``: the project's learner, from ``benchmarks/bandit_loop.py`` (lead engineer's
  module; the row is skipped, with a note, while it does not exist), built per shuffle as::

      make_learner(agents_path: str, dataset: RoutingDataset, cost_weight: float, seed: int,
                   workdir: Path, serving: list[str] | None) -> StreamLearner

  with the agents file path, the (possibly ``--limit``-ed) dataset, the setting's cost weight, the
  shuffle seed, an empty scratch directory under ``--out`` and the agents in service at the start
  (None: all; ``--scenario new-agent`` holds one back); the learner must read no outcome
  (``quality``, ``cost_usd``) from ``dataset`` other than through ``learn``;
* rows that learn nothing, read in each shuffle's order: ``best-single`` (the agent of highest
  mean reward over the whole dataset, in hindsight) and the full-information ceiling as
  ``knn-full`` and ``mlp-full``: 5-fold cross-fitting (folds by a permutation seeded by
  ``--fold-seed``, independent of the shuffles), each fold routed by ``training.evaluation.
  classifiers.fit_knn`` / ``fit_mlp`` fitted on the other folds with every agent's outcome (argmax
  of predicted quality - cost_weight * predicted cost). Their predictions are computed once per dataset
  (and cached under ``--out/ceiling``).

The "ceiling last-1000" of a shuffle is the larger of the kNN's and the MLP's last-1000 means on the
same prompts. The goals of the agent-router row (printed when it ran): (a) its running mean minus
the best learning anchor's (VW three, LinUCB, both Thompson samplers) at T = 1000 and at the end,
>= +0.01; (b) at the end >= the best single agent's; (c) its last-1000 mean >= the ceiling's
last-1000 - 0.005.

Default settings: ``llmrouter-dc`` at cost weight 0, ``routellm-evals`` at cost weight 0 and
``routellm-evals-cw`` at cost weight 100 (quality per USD). At 100, cost matters on routellm-evals:
the best single agent switches from gpt-4-1106-preview (mean reward 0.811 at 0, 0.527 at 100) to
Mixtral (0.676), while the oracle still sends ~18% of the prompts to GPT-4 (0.804).

Usage::

    .venv/bin/python benchmarks/bandit_stream.py [--shuffles 5] [--shuffle-offset 100] [--limit N]
        [--learners vw-squarecb,linucb,...] [--dataset NAME=PROMPTS,AGENTS,COST_WEIGHT ...]
        [--scenario break|degrade|price|new-agent|retire|preference] [--cost-weight-range 1,10000]
        [--changed-agent best|worst] [-s RETRAIN_FIELD=VALUE ...]
        [--out runs/bandit_stream]

With ``--scenario preference`` every request carries its own ``cost_weight`` (drawn log-uniformly
from ``--cost-weight-range``, seeded by ``--fold-seed``; the setting's COST_WEIGHT is not used): the
anchors get it in :class:`benchmarks.bandit_anchors.Context` as features, agent-router is a cold
start with ``--cost-weight-max`` the range's top and routes each request at its weight.

Shuffle seeds are ``offset + 0 .. N-1``: the reported figures use the default offset 100; tune on
others (``--shuffle-offset 0``). Prints one table per setting (mean ± sd over shuffles, and each
learner's act + learn seconds per shuffle), the goals, writes ``bandit_stream.png`` (running-mean
curves) and ``bandit_stream.json`` under ``--out``, and prints every figure as one JSON object on
the last line of stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.bandit_anchors import ANCHORS, LEARNING_ANCHORS, Context, StreamLearner, make_anchor  # noqa: E402
from benchmarks.bandit_scenarios import (  # noqa: E402
    AGENT_SET_SCENARIOS,
    CHANGED_AGENTS,
    SCENARIOS,
    SHARE_AFTER,
    SHARE_WINDOW,
    Change,
    change_figures,
    make_change,
    scenario_goals,
)
from benchmarks.common import load_average, machine, print_json_line, print_table  # noqa: E402
from training.json_safe import finite_or_null  # noqa: E402
from training.retrain.config import RetrainConfig  # noqa: E402

#: Prompt counts at which the running mean reward is reported (plus the end of the stream).
CHECKPOINTS = (250, 1000, 2000)
#: Prompts of the trailing window.
LAST = 1000
#: Cross-fitting folds of the full-information ceiling.
FOLDS = 5
AGENT_ROUTER = "agent-router"
FIXED_ROWS = ("best-single", "knn-full", "mlp-full")
DEFAULT_DATASETS = (
    "llmrouter-dc=data/llmrouter-dc/prompts.jsonl.gz,data/llmrouter-dc/agents.json,0",
    "routellm-evals=data/routellm-evals/prompts.jsonl.gz,data/routellm-evals/agents.json,0",
    "routellm-evals-cw=data/routellm-evals/prompts.jsonl.gz,data/routellm-evals/agents.json,100",
)


@dataclass(frozen=True)
class Setting:
    """One dataset setting: ``--dataset NAME=PROMPTS,AGENTS,COST_WEIGHT``."""

    name: str
    prompts: str
    agents: str
    cost_weight: float


def parse_setting(text: str) -> Setting:
    """``NAME=PROMPTS,AGENTS,COST_WEIGHT`` -> :class:`Setting`."""
    try:
        name, rest = text.split("=", 1)
        prompts, agents, weight = rest.split(",")
        return Setting(name.strip(), prompts.strip(), agents.strip(), float(weight))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--dataset wants NAME=PROMPTS,AGENTS,COST_WEIGHT, got {text!r}") from None


def load(setting: Setting, limit: int | None) -> tuple[Any, np.ndarray, list[Context]]:
    """The dataset, its embeddings ``[P, E]`` float32 and each prompt's :class:`Context`."""
    from contract.pricing import expected_costs_usd
    from env.dataset import load_dataset
    from env.embedder import Embedder

    ds = load_dataset(setting.prompts, setting.agents, limit=limit)
    emb = Embedder("all-MiniLM-L6-v2", cache_dir="var/embeddings", progress=False).encode(ds.prompts)
    tokens = ds.prompt_tokens
    expected = expected_costs_usd([a.price for a in ds.agents], tokens)  # [P, K] USD
    contexts = [Context(emb[i], ds.prompts[i], int(tokens[i]), expected[i]) for i in range(len(ds))]
    return ds, emb, contexts


def ceiling_choices(ds: Any, emb: np.ndarray, cost_weight: float | np.ndarray, fold_seed: int, cache: Path,
                    allowed: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Cross-fitted full-information routers: ``{"knn-full": [P], "mlp-full": [P]}`` int64 actions
    (among the ``allowed`` agents, ``[K]`` bool; None: all).

    Each of ``FOLDS`` folds (a ``fold_seed`` permutation) is routed by ``fit_knn`` / ``fit_mlp``
    fitted on the other folds' embeddings and every agent's quality and cost, by ``route_wtp`` at
    willingness to pay ``cost_weight``. The predictions are cached in ``cache`` by dataset
    fingerprint and fold seed (and, for the kNN, whose neighbour count is chosen for it, cost weight).
    ``cost_weight`` ``[P]`` (each prompt's own): each prompt is routed at its own, the kNN's neighbour
    count chosen at their median.
    """
    from training.evaluation.classifiers import fit_knn, fit_mlp, route_wtp

    weights = np.asarray(cost_weight, dtype=np.float64)
    per_prompt = weights.ndim > 0
    if per_prompt:
        cost_weight = float(np.median(weights))
    n = len(ds)
    folds = np.array_split(np.random.default_rng(fold_seed).permutation(n), FOLDS)
    out = {}
    for name in ("knn-full", "mlp-full"):
        tag = f"{ds.fingerprint()}|{name}|{fold_seed}|{FOLDS}" + (f"|{cost_weight!r}" if name == "knn-full" else "")
        path = cache / f"{name}-{hashlib.sha256(tag.encode()).hexdigest()[:16]}.npz"
        if path.exists():
            with np.load(path) as f:
                q_hat, c_hat = f["quality"], f["cost_usd"]
        else:
            q_hat, c_hat = np.zeros(ds.quality.shape), np.zeros(ds.quality.shape)  # [P, K] predicted
            for f, test in enumerate(folds):
                train = np.concatenate([g for j, g in enumerate(folds) if j != f])
                sub = ds.subset(train)
                predictor = (fit_knn(emb[train], sub, cost_weight=cost_weight) if name == "knn-full"
                             else fit_mlp(emb[train], sub, seed=fold_seed))
                q_hat[test], c_hat[test] = predictor.predict(emb[test])
            cache.mkdir(parents=True, exist_ok=True)
            np.savez(path, quality=q_hat, cost_usd=c_hat)
        if allowed is not None:  # an agent out of service is never the best
            q_hat = np.where(allowed, q_hat, -1e9)
        out[name] = route_wtp(q_hat, c_hat, weights[:, None] if per_prompt else cost_weight)  # type: ignore[arg-type]
    return out


def stream_figures(rewards: np.ndarray) -> dict[str, float]:
    """Progressive-validation figures of one stream's rewards ``[P]`` (in arrival order): running
    mean at each ``CHECKPOINTS`` ``T`` (NaN past the end) and at the end, mean of the last ``LAST``."""
    n = len(rewards)
    out = {f"T{t}": float(rewards[:t].mean()) if t <= n else float("nan") for t in CHECKPOINTS}
    out["end"] = float(rewards.mean())
    out[f"last{LAST}"] = float(rewards[-LAST:].mean())
    return out


@dataclass(frozen=True)
class World:
    """The outcomes a stream is scored on: ``reward``, ``quality`` and ``cost_usd``, ``[P, K]`` each."""

    reward: np.ndarray
    quality: np.ndarray
    cost_usd: np.ndarray

    @classmethod
    def of(cls, ds: Any, cost_weight: float | np.ndarray) -> World:
        """``reward = quality - cost_weight * cost_usd`` of dataset ``ds`` (``cost_weight``: one, or
        ``[P]`` each prompt's own)."""
        weight = np.asarray(cost_weight, dtype=np.float64)
        weight = weight[:, None] if weight.ndim else weight
        return cls(ds.quality.astype(np.float64) - weight * ds.cost_usd.astype(np.float64), ds.quality, ds.cost_usd)


def preference_weights(n: int, low: float, high: float, seed: int) -> np.ndarray:
    """``[P]`` float64, each prompt's own ``cost_weight`` (USD^-1) for ``--scenario preference``:
    log-uniform on ``[low, high]``, seeded (the same for every shuffle and learner)."""
    rng = np.random.default_rng(seed)
    return np.exp(rng.uniform(np.log(low), np.log(high), size=n))


def run_learner(learner: StreamLearner, contexts: list[Context], order: np.ndarray, world: World,
                after: World | None = None, change_at: int | None = None, change: Change | None = None,
                ) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """One pass of ``learner`` over ``order``.

    Args:
        world: every agent's outcome on every prompt. A learner with a
            ``learn_outcome(ctx, action, quality, cost_usd, propensity)`` method (the agent-router
            row, whose feedback carries quality and cost apart, as ``POST /v1/feedback`` does) is
            told the chosen agent's outcome that way instead of ``learn``.
        after, change_at: the world the prompts from arrival ``change_at`` on meet (None: no change).
        change: a change of the agent set: each context says the agents in service
            (``Context.allowed``), and at the change a learner with a ``change_agents(allowed)``
            method is told, as an operator tells the router.

    Returns:
        ``(rewards [P] in arrival order, act + learn seconds, propensities [P], actions [P])``.
    """
    rewards = np.empty(len(order))
    props = np.empty(len(order))
    actions = np.empty(len(order), dtype=np.int64)
    spent = 0.0
    for t, i in enumerate(order):
        w = after if after is not None and change_at is not None and t >= change_at else world
        ctx = contexts[i]
        if change is not None and change.scenario in AGENT_SET_SCENARIOS:
            ctx = dataclasses.replace(ctx, allowed=change.allowed(t))
            if t == change.at and callable(getattr(learner, "change_agents", None)):
                learner.change_agents(change.allowed_after)
        start = time.perf_counter()
        a, p = learner.act(ctx)
        spent += time.perf_counter() - start
        r = float(w.reward[i, a])
        start = time.perf_counter()
        if hasattr(learner, "learn_outcome"):
            learner.learn_outcome(ctx, a, float(w.quality[i, a]), float(w.cost_usd[i, a]), p)
        else:
            learner.learn(ctx, a, r, p)
        spent += time.perf_counter() - start
        rewards[t], props[t], actions[t] = r, p, a
    close = getattr(learner, "close", None)
    if callable(close):
        close()
    return rewards, spent, props, actions


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def _router_factory(learners: list[str]) -> Any:
    """``benchmarks.bandit_loop.make_learner`` when the agent-router row is asked for and exists."""
    if AGENT_ROUTER not in learners:
        return None
    try:
        from benchmarks.bandit_loop import make_learner
    except ImportError as exc:
        print(f"{AGENT_ROUTER}: skipped (benchmarks.bandit_loop not importable: {exc})", flush=True)
        return None
    return make_learner


def _mean_sd(values: list[float]) -> dict[str, float]:
    v = [x for x in values if np.isfinite(x)]
    if not v:
        return {"mean": float("nan"), "sd": float("nan")}
    return {"mean": statistics.fmean(v), "sd": statistics.stdev(v) if len(v) > 1 else 0.0}


def _cell(s: dict[str, float], sign: bool = False) -> str:
    if not np.isfinite(s["mean"]):
        return "-"
    return f"{s['mean']:+.3f} ± {s['sd']:.3f}" if sign else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def run_setting(setting: Setting, args: argparse.Namespace, learners: list[str], router: Any) -> dict[str, Any]:
    """Every learner and fixed row on every shuffle of one dataset setting; the summary figures."""
    t0 = time.perf_counter()
    ds, emb, contexts = load(setting, args.limit)
    n, k = ds.quality.shape
    weights: float | np.ndarray = setting.cost_weight
    if args.scenario == "preference":  # each request's own cost weight, told to every learner with the prompt
        weights = preference_weights(n, *args.cost_weight_range, seed=args.fold_seed)
        contexts = [dataclasses.replace(c, cost_weight=float(weights[i])) for i, c in enumerate(contexts)]
    world = World.of(ds, weights)
    reward = world.reward  # [P, K]
    best = int(reward.mean(axis=0).argmax())
    fixed = {"best-single": np.full(n, best, dtype=np.int64)}
    start = time.perf_counter()
    fixed |= ceiling_choices(ds, emb, weights, args.fold_seed, args.out / "ceiling")
    change = make_change(args.scenario, ds, setting.cost_weight, args.change_at, args.price_factor,
                         args.changed_agent)
    after = fixed_after = None
    if change is not None:  # the fixed rows of the changed world, read from the change on
        after = World.of(change.dataset, setting.cost_weight)
        best_after = int(after.reward.mean(axis=0).argmax())
        fixed_after = {"best-single": np.full(n, best_after, dtype=np.int64)}
        fixed_after |= ceiling_choices(change.dataset, emb, setting.cost_weight, args.fold_seed, args.out / "ceiling")
        if change.scenario in AGENT_SET_SCENARIOS:  # the fixed rows route among the agents in service
            for rows, allowed in ((fixed, change.allowed_before), (fixed_after, change.allowed_after)):
                rows["best-single"][:] = int(np.where(allowed, reward.mean(axis=0), -np.inf).argmax())
                rows |= ceiling_choices(ds, emb, setting.cost_weight, args.fold_seed, args.out / "ceiling", allowed)
    ceiling_s = time.perf_counter() - start
    print(f"\n{setting.name}: {n} prompts, {k} agents, cost_weight {setting.cost_weight:g}; best single "
          f"{ds.agent_names[best]} ({reward[:, best].mean():.4f}); oracle {reward.max(axis=1).mean():.4f}; "
          f"ceiling routes in {ceiling_s:.1f} s", flush=True)
    if change is not None:
        print(f"  scenario {change.scenario}: {change.name} changes at arrival {change.at}", flush=True)
    if args.scenario == "preference":
        low, high = args.cost_weight_range
        print(f"  scenario preference: each request's cost_weight log-uniform on [{low:g}, {high:g}]", flush=True)

    seeds = [args.shuffle_offset + s for s in range(args.shuffles)]
    per: dict[str, list[dict[str, float]]] = {}
    curves: dict[str, list[np.ndarray]] = {}
    for seed in seeds:
        order = np.random.default_rng(seed).permutation(n)
        results: dict[str, tuple[np.ndarray, float, np.ndarray | None, np.ndarray]] = {}
        for name, choice in fixed.items():  # arrival order; the changed world's choices from the change on
            actions = choice[order]
            if change is not None and fixed_after is not None:
                actions = np.concatenate([actions[:change.at], fixed_after[name][order][change.at:]])
            results[name] = (_rewards(world, after, change, order, actions), float("nan"), None, actions)
        ceiling_last = max(float(results[name][0][-LAST:].mean()) for name in ("knn-full", "mlp-full"))
        for name in learners:
            if name == AGENT_ROUTER:
                if router is None:
                    continue
                workdir = args.out / AGENT_ROUTER / setting.name / f"seed{seed}"
                workdir.mkdir(parents=True, exist_ok=True)
                serving = None
                if change is not None and change.scenario in AGENT_SET_SCENARIOS:
                    serving = [a for a, ok in zip(ds.agent_names, change.allowed_before, strict=True) if ok]
                extra = {"cost_weight_max": args.cost_weight_range[1]} if args.scenario == "preference" else {}
                if args.router_settings:
                    extra["settings"] = dict(args.router_settings)
                learner = router(setting.agents, ds, setting.cost_weight, seed, workdir, serving=serving, **extra)
            else:
                learner = make_anchor(name, k, seed)
            results[name] = run_learner(learner, contexts, order, world, after, change.at if change else None,
                                        change)
            print(f"  shuffle {seed} {name}: end {results[name][0].mean():.4f} in {results[name][1]:.1f} s",
                  flush=True)
        for name, (r, spent, props, actions) in results.items():
            fig = stream_figures(r) | {"seconds": spent, f"last{LAST}_minus_ceiling": float(r[-LAST:].mean())
                                       - ceiling_last}
            if change is not None:
                fig |= change_figures(r, actions, change)
            if props is not None:
                fig["min_propensity"] = float(props.min())
            fig["ceiling_last"] = ceiling_last
            per.setdefault(name, []).append(fig)
            curves.setdefault(name, []).append(np.cumsum(r) / np.arange(1, n + 1))

    keys = [f"T{t}" for t in CHECKPOINTS] + ["end", f"last{LAST}", f"last{LAST}_minus_ceiling", "seconds"]
    change_keys = [key for key in (per["best-single"][0] if change is not None else {}) if key in CHANGE_KEYS]
    summary = {name: {key: _mean_sd([f[key] for f in figs]) | {"values": [f[key] for f in figs]}
                      for key in keys + change_keys}
               for name, figs in per.items()}
    ceiling = _mean_sd([f["ceiling_last"] for f in per["best-single"]])
    headers = ["learner", *(f"T={t}" for t in CHECKPOINTS), "end", f"last {LAST}", "vs ceiling", "act+learn s"]
    table = [[name, *(_cell(s[key]) for key in keys[:-3]), _cell(s[keys[-3]]), _cell(s[keys[-2]], sign=True),
              "-" if not np.isfinite(s["seconds"]["mean"]) else f"{s['seconds']['mean']:.1f}"]
             for name, s in summary.items()]
    print(f"\n{setting.name} (cost_weight {setting.cost_weight:g}, {n} prompts, shuffles {seeds}; mean ± sd)")
    print_table(headers, table)
    print(f"ceiling last-{LAST} (max of knn-full, mlp-full per shuffle): {_cell(ceiling)}")
    if change is not None:
        print(f"\nafter the change ({change.scenario} of {change.name} at arrival {change.at}; share: of the "
              f"changed agent in the {SHARE_WINDOW} arrivals from n feedbacks after the change)")
        print_table(["learner", *change_keys], [[name, *(_cell(s[key]) for key in change_keys)]
                                                for name, s in summary.items()])
    out: dict[str, Any] = {
        "name": setting.name, "prompts_file": setting.prompts, "agents_file": setting.agents,
        "cost_weight": setting.cost_weight, "prompts": n, "agents": ds.agent_names, "shuffle_seeds": seeds,
        "best_single_agent": ds.agent_names[best], "oracle_reward": float(reward.max(axis=1).mean()),
        "ceiling_seconds": ceiling_s, "ceiling_last": ceiling, "rows": summary,
        "curves": {name: np.mean(c, axis=0) for name, c in curves.items()}, "seconds": time.perf_counter() - t0,
    }
    if args.scenario == "preference":
        out["preference"] = {"cost_weight_range": list(args.cost_weight_range), "seed": args.fold_seed}
    if change is not None:
        out["change"] = {"scenario": change.scenario, "agent": change.name, "which": change.which, "at": change.at,
                         "price_factor": args.price_factor if change.scenario == "price" else None}
    if AGENT_ROUTER in summary:
        out["goals"] = goals(summary, ceiling)
        if change is not None:
            young = RetrainConfig.model_validate(dict(args.router_settings)).young_records
            out["goals"] |= scenario_goals(summary, change, AGENT_ROUTER, list(LEARNING_ANCHORS), n - change.at, young)
        print_goals(out["goals"])
    return out


#: the per-shuffle figures of :func:`benchmarks.bandit_scenarios.change_figures`, in the table's order
CHANGE_KEYS = ("after_mean", *(f"share_after{n}" for n in SHARE_AFTER), f"share_last{SHARE_WINDOW}", "picks_after")


def _rewards(world: World, after: World | None, change: Change | None, order: np.ndarray,
             actions: np.ndarray) -> np.ndarray:
    """``[P]`` rewards of ``actions`` (arrival order) on the prompts ``order``, in the changed world
    from the change on."""
    r = world.reward[order, actions]
    if change is not None and after is not None:
        r[change.at:] = after.reward[order[change.at:], actions[change.at:]]
    return r


def goals(summary: dict[str, Any], ceiling: dict[str, float]) -> dict[str, Any]:
    """The agent-router row against the issue's goals (means over shuffles)."""
    me = summary[AGENT_ROUTER]
    anchors = [a for a in LEARNING_ANCHORS if a in summary]
    out: dict[str, Any] = {}
    for key in ("T1000", "end"):
        if anchors:
            best = max(anchors, key=lambda a, key=key: summary[a][key]["mean"])
            margin = me[key]["mean"] - summary[best][key]["mean"]
            out[f"a_{key}_minus_best_anchor"] = {"best_anchor": best, "margin": margin, "goal": 0.01,
                                                 "met": bool(margin >= 0.01)}
    margin = me["end"]["mean"] - summary["best-single"]["end"]["mean"]
    out["b_end_minus_best_single"] = {"margin": margin, "goal": 0.0, "met": bool(margin >= 0.0)}
    margin = me[f"last{LAST}"]["mean"] - (ceiling["mean"] - 0.005)
    out[f"c_last{LAST}_minus_ceiling_plus_0.005"] = {"margin": margin, "goal": 0.0, "met": bool(margin >= 0.0)}
    return out


def print_goals(g: dict[str, Any]) -> None:
    """One line per goal of the agent-router row."""
    for key, v in g.items():
        extra = f" (best anchor {v['best_anchor']})" if "best_anchor" in v else ""
        print(f"goal {key}: {v['margin']:+.4f} vs >= {v['goal']:+.3f}{extra}: {'met' if v['met'] else 'NOT met'}")


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Running-mean reward curves (mean over shuffles), one panel per dataset setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, res in zip(axes[0], results, strict=True):
        for name, curve in res["curves"].items():
            x = np.arange(1, len(curve) + 1)
            start = min(50, len(curve) - 1)
            style = "--" if name in FIXED_ROWS else "-"
            ax.plot(x[start:], curve[start:], style, label=name, linewidth=2.0 if name == AGENT_ROUTER else 1.2)
        ax.set_title(f"{res['name']} (cost_weight {res['cost_weight']:g})")
        ax.set_xlabel("prompts seen T")
        ax.set_ylabel("running mean reward")
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _weight_range(text: str) -> tuple[float, float]:
    try:
        low, high = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cost-weight-range wants LOW,HIGH, got {text!r}") from None
    if not 0 < low < high:
        raise argparse.ArgumentTypeError(f"--cost-weight-range wants 0 < LOW < HIGH, got {text!r}")
    return low, high


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", type=parse_setting, action="append", default=None,
                    help="NAME=PROMPTS,AGENTS,COST_WEIGHT (repeatable; default: the three settings of the docstring)")
    ap.add_argument("--shuffles", type=int, default=5)
    ap.add_argument("--shuffle-offset", type=int, default=100, help="shuffle seeds are offset + 0 .. N-1")
    ap.add_argument("--fold-seed", type=int, default=0, help="seeds the ceiling's cross-fitting folds and its MLP")
    ap.add_argument("--limit", type=int, default=None, help="prompts per dataset (the first N of the file)")
    ap.add_argument("--learners", default=",".join([*ANCHORS, AGENT_ROUTER]),
                    help=f"comma list of {', '.join([*ANCHORS, AGENT_ROUTER])}")
    ap.add_argument("--scenario", choices=SCENARIOS, default="none",
                    help="the world changes mid-stream (benchmarks/bandit_scenarios.py)")
    ap.add_argument("--change-at", type=float, default=0.5, help="where the change comes, a share of the stream")
    ap.add_argument("-s", "--router-set", dest="router_settings", type=_key_value, action="append", default=[],
                    metavar="KEY=VALUE", help="a RetrainConfig field for agent-router's rounds (an ablation)")
    ap.add_argument("--changed-agent", choices=CHANGED_AGENTS, default="best",
                    help="the agent that changes: the favourite (best) or the one of lowest mean reward (worst)")
    ap.add_argument("--price-factor", type=float, default=10.0, help="the price scenario's factor")
    ap.add_argument("--cost-weight-range", type=_weight_range, default=(1.0, 10000.0), metavar="LOW,HIGH",
                    help="the preference scenario's range of each request's cost_weight (USD^-1), log-uniform")
    ap.add_argument("--out", type=Path, default=Path("runs/bandit_stream"))
    args = ap.parse_args(argv)
    settings = args.dataset or [parse_setting(s) for s in DEFAULT_DATASETS]
    learners = [x.strip() for x in args.learners.split(",") if x.strip()]
    unknown = [x for x in learners if x not in ANCHORS and x != AGENT_ROUTER]
    if unknown:
        ap.error(f"unknown learners: {', '.join(unknown)}")
    start_load, t0 = load_average(), time.perf_counter()
    router = _router_factory(learners)
    results = [run_setting(s, args, learners, router) for s in settings]
    png = args.out / "bandit_stream.png"
    plot(results, png)
    figures: dict[str, Any] = {
        "benchmark": "bandit_stream", "shuffles": args.shuffles, "shuffle_offset": args.shuffle_offset,
        "fold_seed": args.fold_seed, "limit": args.limit, "learners": learners, "scenario": args.scenario,
        "changed_agent": args.changed_agent, "router_settings": dict(args.router_settings),
        "change_at": args.change_at,
        "settings": {r["name"]: {k: v for k, v in r.items() if k != "curves"} for r in results},
        "png": str(png), "wall_s": time.perf_counter() - t0, "machine": machine(start_load),
    }
    (args.out / "bandit_stream.json").write_text(json.dumps(finite_or_null(figures), indent=1))
    print(f"\nwrote {png} and {args.out / 'bandit_stream.json'}")
    print_json_line(figures)


if __name__ == "__main__":
    main()
