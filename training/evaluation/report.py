"""``agent-router eval``: every figure of one split in one JSON-able dict, and its text tables.

Routing rules (the report's ``routers``) scored offline (each prompt routed once, every agent free; ``reward = quality -
cost_weight * cost_usd``), each at one operating point and, where it has one, along a cost-quality
curve:

* ``policy``: greedy at zero load; its curve is the main checkpoint plus the ``--curve``
  checkpoints, one point per checkpoint, labelled with the ``env.cost_weight`` it was trained at.
  A checkpoint trained for every trade-off (``env.cost_weight_range``) is routed at the table's
  ``cost_weight`` and swept itself over the kNN's ``λ`` grid, one point per ``λ``.
* ``policy_threshold`` (two agents only): the main checkpoint thresholding ``π(strong | prompt)``
  (RouteLLM-style); its point at threshold 0.5 is the greedy policy.
* ``knn``, ``mlp``: :mod:`training.evaluation.classifiers` (the kNN's neighbour count chosen by
  leave-one-out on train), at willingness to pay ``λ = cost_weight``; curve: the ``λ`` sweep of
  :func:`~training.evaluation.classifiers.wtp_grid`.
* ``random`` (uniform, exact expectation), ``best_single`` (best mean train reward),
  ``cheapest`` (lowest mean train cost): one point each.
* ``zero_router``: RouterBench's Zero router, mixtures of single agents: the hull of the
  agents' points (its operating point is ``best_single``'s).
* ``oracle``: per prompt the true best reward (ties: cheaper); curve: the ``λ`` sweep on the true
  outcomes. An upper bound, not a baseline.

AIQ (:func:`~training.evaluation.curves.aiq`) uses one cost range for the whole table: from the
cheapest to the dearest operating point of any rule, oracle included. With two agents, APGR and
CPT(50%)/CPT(80%) of every rule with a curve (strong agent: the dearer on train). With any
finite capacity (agents file or ``--capacity``), :mod:`training.evaluation.capacity` scores the
rules in PromptEnv.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError
from env.config import EnvConfig
from env.dataset import RoutingDataset
from policy.artefact import Policy
from policy.checkpoint import META, load_checkpoint
from training.evaluation import capacity as cap
from training.evaluation import curves
from training.evaluation.classifiers import QualityPredictor, fit_predictors, route_wtp, wtp_grid
from training.evaluation.offline import policy_choices, summarize, zero_load_probabilities
from training.json_safe import finite_or_null

#: Routers that are baselines for the AIQ goal (not the policy, not the oracle bound).
AIQ_BASELINES = ("random", "best_single", "cheapest", "zero_router", "knn", "mlp")
#: Routers with one fixed operating point (no curve of their own): no APGR/CPT for them.
POINT_ROUTERS = ("best_single", "cheapest", "zero_router")
#: RouteLLM's CPT targets, as PGR fractions.
CPT_TARGETS = (0.5, 0.8)


# ---------------------------------------------------------------------------------- inputs
def parse_capacity_overrides(items: Sequence[str] | None, agent_names: Sequence[str]) -> dict[str, int | None]:
    """``["NAME=3", "OTHER=none"]`` -> ``{"NAME": 3, "OTHER": None}``.

    Raises:
        UserError: not ``NAME=N``, an unknown agent, or ``N`` not an integer >= 1 (or ``none``).
    """
    out: dict[str, int | None] = {}
    for item in items or []:
        name, sep, raw = item.partition("=")
        name, raw = name.strip(), raw.strip()
        if not sep or not name:
            raise UserError(f"--capacity {item!r}: expected NAME=N, e.g. --capacity {agent_names[0]}=1")
        if name not in agent_names:
            raise UserError(f"--capacity {item!r}: no agent {name!r}; agents: {', '.join(agent_names)}")
        if raw.lower() in ("none", "null", "inf", "unbounded"):
            out[name] = None
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value < 1:
            raise UserError(f"--capacity {item!r}: capacity must be an integer >= 1 (requests per step) or none")
        out[name] = value
    return out


def load_curve_policies(paths: Sequence[str | Path], agents: Sequence[str]) -> list[Policy]:
    """The checkpoints of ``--curve``: a version directory, or every version in a directory.

    Raises:
        UserError: a path with no checkpoint; CheckpointError: a corrupt one or other agents.
    """
    out: list[Policy] = []
    for raw in paths:
        path = Path(raw)
        if (path / META).is_file():
            out.append(load_checkpoint(path, expect_agents=list(agents)))
        elif path.is_dir():
            versions = sorted(p for p in path.iterdir() if not p.name.startswith(".") and (p / META).is_file())
            if not versions:
                raise UserError(f"--curve {path}: no checkpoint in this directory (no */{META})")
            out.extend(load_checkpoint(v, expect_agents=list(agents)) for v in versions)
        else:
            raise UserError(f"--curve {path}: checkpoint not found")
    return out


def trained_cost_weight(policy: Policy) -> float | None:
    """The ``env.cost_weight`` a checkpoint was trained with (None when not recorded)."""
    try:
        return float((policy.meta.training or {})["env"]["cost_weight"])
    except (KeyError, TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------- pieces
def _point(choice: np.ndarray, split: RoutingDataset, cost_weight: float, label: str,
           strong: int | None) -> dict[str, Any]:
    m = summarize(choice, split.quality, split.cost_usd, cost_weight)
    point = {"cost_usd_per_1k": m["cost_usd_per_1k"], "quality": m["quality"], "label": label}
    if strong is not None:
        point["strong_fraction"] = float(np.mean(choice == strong)) if len(choice) else 0.0
    return point


def _sweep(quality: np.ndarray, cost_usd: np.ndarray, split: RoutingDataset, cost_weight: float,
           strong: int | None, points: int) -> list[dict[str, Any]]:
    return [_point(route_wtp(quality, cost_usd, lam), split, cost_weight, f"wtp={lam:.4g}", strong)
            for lam in wtp_grid(quality, cost_usd, points)]


def _strong_agent(train: RoutingDataset) -> int:
    """The dearer agent on train (ties: the better one): RouteLLM's strong model."""
    return int(np.lexsort((-train.quality.mean(0), -train.cost_usd.mean(0)))[0])


def _threshold_curve(p_strong: np.ndarray, split: RoutingDataset, cost_weight: float, strong: int,
                     bins: int = 20) -> list[dict[str, Any]]:
    """RouteLLM's sweep: thresholds at the quantiles of ``π(strong)``; strong when ``p >= t``."""
    weak = 1 - strong
    thresholds = np.unique(np.quantile(p_strong, np.linspace(0, 1, bins + 1))) if len(p_strong) else np.zeros(0)
    pts = []
    for t in [*thresholds.tolist(), math.inf]:
        choice = np.where(p_strong >= t, strong, weak)
        pts.append(_point(choice, split, cost_weight, f"threshold={t:.4g}", strong))
    return pts


def lambda_grid(predictors: Mapping[str, QualityPredictor], embeddings: np.ndarray, points: int) -> np.ndarray:
    """The ``λ`` values of the baselines' sweeps (the kNN's, else the first predictor's)."""
    if not predictors:
        return np.zeros(1)
    pred = predictors.get("knn") or next(iter(predictors.values()))
    return wtp_grid(*pred.predict(embeddings), points)


def offline_report(
    policy: Policy,
    train: RoutingDataset,
    split: RoutingDataset,
    embeddings: np.ndarray,
    cost_weight: float,
    predictors: Mapping[str, QualityPredictor],
    curve_policies: Sequence[Policy] = (),
    wtp_points: int = 32,
) -> dict[str, Any]:
    """Every router at its operating point and along its curve on ``split`` (no queues).

    Args:
        policy: the main checkpoint.
        train: the train split (best single / cheapest agent, strong agent).
        split: the split scored; ``embeddings`` its ``[P, E]`` prompt embeddings.
        cost_weight: reward per USD of the table.
        predictors: fitted ``{"knn": ..., "mlp": ...}`` (:func:`fit_predictors`).
        curve_policies: more checkpoints (other ``cost_weight``) for the policy's curve.
        wtp_points: quantiles of the willingness-to-pay sweeps.

    Returns:
        ``{"routers", "per_task", "curves", "hulls", "cost_range_usd_per_1k"}`` plus, with two
        agents, ``"strong_agent", "weak_agent", "apgr", "cpt"`` (see the module docstring and
        docs/evaluation.md).
    """
    q, c = split.quality, split.cost_usd
    n, k = q.shape
    strong = _strong_agent(train) if k == 2 else None
    names, tokens = split.agent_names, split.prompt_tokens
    choices: dict[str, np.ndarray] = {}
    pts: dict[str, list[dict[str, Any]]] = {}
    extra: dict[str, dict[str, Any]] = {}

    # the policy and its curve: one point per checkpoint, or per λ of a policy of every trade-off
    seen: set[str] = set()
    pts["policy"] = []
    grid = lambda_grid(predictors, embeddings, wtp_points)
    for i, pol in enumerate([policy, *curve_policies]):
        if pol.version in seen:
            continue
        seen.add(pol.version)
        if pol.layout.cost_preference:
            if i == 0:
                choices["policy"] = policy_choices(pol, embeddings, tokens, cost_weight=cost_weight)
            for lam in grid:
                choice = policy_choices(pol, embeddings, tokens, cost_weight=float(lam))
                pts["policy"].append(_point(choice, split, cost_weight, f"cost_weight={lam:.4g}", strong)
                                     | {"version": pol.version, "cost_weight": float(lam)})
            continue
        choice = policy_choices(pol, embeddings, tokens)
        if i == 0:
            choices["policy"] = choice
        w = trained_cost_weight(pol)
        point = _point(choice, split, cost_weight, f"cost_weight={w:g}" if w is not None else pol.version, strong)
        pts["policy"].append(point | {"version": pol.version, "cost_weight": w})
    extra["policy"] = {"version": policy.version, "cost_weight_trained": trained_cost_weight(policy)}
    if policy.layout.cost_preference:
        extra["policy"] |= {"cost_weight": cost_weight, "cost_weight_max": policy.layout.cost_weight_max}

    # classifiers at λ = cost_weight, and their λ sweeps
    for name, pred in predictors.items():
        q_hat, c_hat = pred.predict(embeddings)
        choices[name] = route_wtp(q_hat, c_hat, cost_weight)
        pts[name] = _sweep(q_hat, c_hat, split, cost_weight, strong, wtp_points)
        extra[name] = {"wtp": cost_weight}
        if name == "knn":
            extra[name]["neighbors"] = int(pred.model.n_neighbors)

    # simple baselines (chosen on train) and the oracle
    train_reward = train.quality - cost_weight * train.cost_usd
    best = int(np.argmax(train_reward.mean(0)))
    cheapest = int(np.argmin(train.cost_usd.mean(0)))
    choices["best_single"] = np.full(n, best, dtype=np.int64)
    choices["cheapest"] = np.full(n, cheapest, dtype=np.int64)
    choices["oracle"] = route_wtp(q, c, cost_weight)
    extra["best_single"] = {"agent": names[best]}
    extra["cheapest"] = {"agent": names[cheapest]}
    extra["zero_router"] = {"agent": names[best]}
    for name in ("best_single", "cheapest"):
        pts[name] = [_point(choices[name], split, cost_weight, names[int(choices[name][0])] if n else name, strong)]
    pts["zero_router"] = [_point(np.full(n, j, dtype=np.int64), split, cost_weight, names[j], strong)
                          for j in range(k)]
    pts["oracle"] = _sweep(q, c, split, cost_weight, strong, wtp_points)
    random_point = {"cost_usd_per_1k": float(c.mean() * 1000), "quality": float(q.mean()), "label": "uniform"}
    if strong is not None:
        random_point["strong_fraction"] = 0.5
    pts["random"] = [random_point]

    routers: dict[str, dict[str, Any]] = {}
    for name in ("policy", "knn", "mlp", "random", "best_single", "cheapest", "zero_router", "oracle"):
        if name == "random":
            m = {"quality": float(q.mean()), "cost_usd_per_1k": float(c.mean() * 1000),
                 "reward": float((q - cost_weight * c).mean())}
        else:
            m = summarize(choices["best_single" if name == "zero_router" else name], q, c, cost_weight)
        routers[name] = m | extra.get(name, {})

    if strong is not None:
        preference = cost_weight if policy.layout.cost_preference else None
        p_strong = zero_load_probabilities(policy.actor, policy.layout, embeddings, tokens,
                                           cost_weight=preference)[:, strong]
        pts["policy_threshold"] = _threshold_curve(p_strong, split, cost_weight, strong)
        routers["policy_threshold"] = dict(routers["policy"]) | {"threshold": 0.5}

    c_min, c_max = curves.shared_cost_range([([p["cost_usd_per_1k"] for p in v], [p["quality"] for p in v])
                                             for v in pts.values()])
    hulls = {}
    for name, v in pts.items():
        cc, qq = [p["cost_usd_per_1k"] for p in v], [p["quality"] for p in v]
        routers[name]["aiq"] = curves.aiq(cc, qq, c_min, c_max)
        hc, hq = curves.non_decreasing_convex_hull(cc, qq)
        hulls[name] = [[float(a), float(b)] for a, b in zip(hc, hq, strict=True)]

    report: dict[str, Any] = {
        "routers": routers,
        "per_task": per_task_table(split, choices, cost_weight),
        "curves": pts,
        "hulls": hulls,
        "cost_range_usd_per_1k": [c_min, c_max],
    }
    if strong is not None:
        report |= two_agent_metrics(pts, split, strong)
    return report


def two_agent_metrics(pts: Mapping[str, Sequence[Mapping[str, Any]]], split: RoutingDataset,
                      strong: int) -> dict[str, Any]:
    """RouteLLM's APGR and CPT(50%), CPT(80%) of every router with a curve (points with
    ``strong_fraction``; not the single agents of :data:`POINT_ROUTERS`).

    CPT values are percentages of calls to the strong agent, as RouteLLM reports them.
    """
    q_strong, q_weak = float(split.quality[:, strong].mean()), float(split.quality[:, 1 - strong].mean())
    out: dict[str, Any] = {"strong_agent": split.agent_names[strong], "weak_agent": split.agent_names[1 - strong],
                           "strong_quality": q_strong, "weak_quality": q_weak}
    if q_strong == q_weak:
        out["apgr_note"] = "the strong and weak agents have the same mean quality: PGR is undefined"
        return out
    apgr, cpt = {}, {}
    for name, v in pts.items():
        if name in POINT_ROUTERS:
            continue
        x = [p["strong_fraction"] for p in v]
        y = [p["quality"] for p in v]
        apgr[name] = curves.apgr(x, y, q_weak, q_strong)
        cpt[name] = {f"{round(t * 100)}": 100 * curves.cpt(x, y, q_weak, q_strong, t) for t in CPT_TARGETS}
    return out | {"apgr": apgr, "cpt": cpt}


def per_task_table(split: RoutingDataset, choices: Mapping[str, np.ndarray], cost_weight: float) -> dict[str, Any]:
    """``{task: {"prompts": n, "routers": {name: {quality, cost_usd_per_1k, reward}}}}``; ``random``
    is the exact expectation; prompts without a task are under ``"(none)"``."""
    tasks = np.asarray([t if t is not None else "(none)" for t in split.tasks], dtype=object)
    q, c = split.quality, split.cost_usd
    out: dict[str, Any] = {}
    for task in sorted(set(tasks.tolist())):
        idx = np.flatnonzero(tasks == task)
        rows: dict[str, dict[str, float]] = {}
        for name, choice in choices.items():
            rows[name] = summarize(choice[idx], q[idx], c[idx], cost_weight)
        rows["random"] = {"quality": float(q[idx].mean()), "cost_usd_per_1k": float(c[idx].mean() * 1000),
                          "reward": float((q[idx] - cost_weight * c[idx]).mean())}
        out[task] = {"prompts": len(idx), "routers": rows}
    return out


def capacity_report(
    policy: Policy,
    train: RoutingDataset,
    split: RoutingDataset,
    embeddings: np.ndarray,
    predictors: Mapping[str, QualityPredictor],
    config: EnvConfig,
    capacities: Sequence[int | None],
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
) -> dict[str, Any]:
    """Every router run in PromptEnv with ``config`` and ``capacities``, same seed for all.

    Routers: ``policy`` (greedy on obs with load), ``load_greedy`` (the kNN predictor's best
    ``q̂ - cost_weight·ĉ`` among agents not saturated), ``knn``, ``mlp``, ``best_single``,
    ``cheapest``, ``random`` and ``oracle`` (true outcomes; all of these load-blind).

    Returns:
        ``{"config": {...}, "routers": {name: {quality, cost_usd_per_1k, reward, congestion,
        requests, share}}}``.
    """
    w = config.cost_weight
    emb_dim = embeddings.shape[1] if embeddings.ndim == 2 else 0
    cap.check_policy_fits(policy, config, emb_dim, split.quality.shape[1])
    knn_q, knn_c = predictors["knn"].predict(embeddings)
    rules: dict[str, cap.RoutingRule] = {
        "policy": cap.policy_rule(policy),
        "load_greedy": cap.load_aware_greedy_rule(knn_q - w * knn_c),
        "knn": cap.score_rule(knn_q - w * knn_c),
    }
    if "mlp" in predictors:
        mlp_q, mlp_c = predictors["mlp"].predict(embeddings)
        rules["mlp"] = cap.score_rule(mlp_q - w * mlp_c)
    rules["best_single"] = cap.score_rule((train.quality - w * train.cost_usd).mean(0))
    rules["cheapest"] = cap.score_rule(-train.cost_usd.mean(0))
    rules["random"] = cap.random_rule(seed)
    rules["oracle"] = cap.score_rule(split.quality - w * split.cost_usd)
    steps = steps or cap.default_steps(config)
    scores = cap.score_in_env(rules, embeddings, split.quality, split.cost_usd, capacities, config,
                              seed=seed, steps=steps, device=device, agent_names=split.agent_names,
                              prompt_features=(split.prompt_tokens, policy.layout))
    return {
        "config": {"num_worlds": config.num_worlds, "num_routers": config.num_routers,
                   "episode_len": config.episode_len, "cost_weight": w,
                   "congestion_weight": config.congestion_weight, "load_clip": config.load_clip,
                   "agent_down_prob": config.agent_down_prob, "steps": steps, "seed": seed,
                   "capacities": dict(zip(split.agent_names, capacities, strict=True))},
        "routers": scores,
    }


def goals(report: Mapping[str, Any]) -> dict[str, Any]:
    """The issue's goals, computed: policy quality >= kNN's at equal or lower cost; policy AIQ
    above every baseline's (:data:`AIQ_BASELINES`); in the capacity table, policy reward at least
    10% above the load-aware greedy rule's (relative to the latter's magnitude)."""
    r = report["routers"]
    out: dict[str, Any] = {}
    if "knn" in r:
        p, k = r["policy"], r["knn"]
        out["quality_vs_knn"] = {"policy_quality": p["quality"], "knn_quality": k["quality"],
                                 "policy_cost_usd_per_1k": p["cost_usd_per_1k"],
                                 "knn_cost_usd_per_1k": k["cost_usd_per_1k"],
                                 "met": p["quality"] >= k["quality"] and p["cost_usd_per_1k"] <= k["cost_usd_per_1k"]}
    base = {n: r[n]["aiq"] for n in AIQ_BASELINES if n in r}
    if base:
        top = max(base, key=base.get)
        out["aiq"] = {"policy": r["policy"]["aiq"], "best_baseline": top, "best_baseline_aiq": base[top],
                      "met": r["policy"]["aiq"] > base[top]}
    capr = report.get("capacity", {}).get("routers", {})
    if "policy" in capr and "load_greedy" in capr:
        pr, gr = capr["policy"]["reward"], capr["load_greedy"]["reward"]
        gain = (pr - gr) / abs(gr) if gr else math.inf if pr > gr else 0.0
        out["capacity_reward"] = {"policy": pr, "load_greedy": gr, "relative_gain": gain, "met": gain >= 0.1}
    return out


def run_eval(
    policy: Policy,
    train: RoutingDataset,
    split: RoutingDataset,
    train_embeddings: np.ndarray,
    embeddings: np.ndarray,
    cost_weight: float,
    env_config: EnvConfig | None = None,
    capacities: Sequence[int | None] | None = None,
    curve_policies: Sequence[Policy] = (),
    seed: int = 0,
    steps: int | None = None,
    device: str = "cpu",
    split_name: str = "",
    predictors: Mapping[str, QualityPredictor] | None = None,
) -> dict[str, Any]:
    """The whole ``agent-router eval`` report of ``split`` (see the module docstring).

    Args:
        policy: the main checkpoint; curve_policies: more points of its curve.
        train, train_embeddings: fit the kNN and MLP predictors (seeded with ``seed``), unless
            ``predictors`` gives them already fitted (:func:`fit_predictors` of the same data).
        split, embeddings: the split scored.
        cost_weight: reward per USD (offline table and capacity env).
        env_config: PromptEnv config of the capacity table (its ``cost_weight`` is replaced by
            ``cost_weight``); capacities: per agent (default: the split's agents file).
        seed: predictor and env seed; steps: env steps per router (default
            :func:`~training.evaluation.capacity.default_steps`).

    Returns:
        ``{"split", "prompts", "cost_weight", "policy_version", "routers", "per_task", "curves",
        "hulls", "cost_range_usd_per_1k", ["strong_agent", "weak_agent", "apgr", "cpt"],
        ["capacity"], "goals"}``.
    """
    if len(split) == 0:
        raise UserError(f"split {split_name or '?'} has no prompts")
    if predictors is None:
        predictors = fit_predictors(train_embeddings, train, seed=seed, cost_weight=cost_weight)
    report: dict[str, Any] = {"split": split_name, "prompts": len(split), "cost_weight": cost_weight,
                              "policy_version": policy.version, "agents": split.agent_names}
    report |= offline_report(policy, train, split, embeddings, cost_weight, predictors, curve_policies)
    caps = list(split.capacities if capacities is None else capacities)
    if any(c is not None for c in caps):
        cfg = (env_config or EnvConfig()).model_copy(update={"cost_weight": cost_weight})
        report["capacity"] = capacity_report(policy, train, split, embeddings, predictors, cfg, caps,
                                             seed=seed, steps=steps, device=device)
    report["goals"] = goals(report)
    return report


# ---------------------------------------------------------------------------------- text
def _fmt(x: Any, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def format_report(report: Mapping[str, Any]) -> str:
    """The report as text tables (routers, per task, two-agent metrics, capacity, goals)."""
    lines = [f"policy {report['policy_version']} on {report['split'] or 'split'} ({report['prompts']} prompts), "
             f"cost_weight={report['cost_weight']:g}",
             f"{'router':<18}{'quality':>9}{'USD/1k':>11}{'reward':>9}{'AIQ':>8}  note"]
    for name, m in report["routers"].items():
        note = m.get("agent") or (f"λ={m['wtp']:g}" if "wtp" in m else "")
        if "neighbors" in m:
            note += f", k={m['neighbors']}"
        if name == "policy":
            note = f"{len(report['curves']['policy'])} checkpoint(s) on its curve"
        lines.append(f"{name:<18}{m['quality']:>9.4f}{m['cost_usd_per_1k']:>11.5f}{m['reward']:>9.4f}"
                     f"{_fmt(m.get('aiq'), '.4f'):>8}  {note}")
    lo, hi = report["cost_range_usd_per_1k"]
    lines.append(f"AIQ: mean quality of each router's non-decreasing convex hull over {lo:.5f}..{hi:.5f} USD/1k")
    if "apgr" in report:
        lines += ["", f"two agents: strong {report['strong_agent']} ({report['strong_quality']:.4f}), "
                      f"weak {report['weak_agent']} ({report['weak_quality']:.4f})",
                  f"{'router':<18}{'APGR':>8}{'CPT(50%)':>10}{'CPT(80%)':>10}"]
        for name, v in report["apgr"].items():
            c = report["cpt"][name]
            lines.append(f"{name:<18}{v:>8.4f}{_fmt(c['50'], '.1f') + '%':>10}{_fmt(c['80'], '.1f') + '%':>10}")
    per_task = report["per_task"]
    if per_task:
        names = [n for n in ("policy", "knn", "mlp", "random", "best_single", "cheapest", "oracle")
                 if n in next(iter(per_task.values()))["routers"]]
        lines += ["", "quality per task", f"{'task':<22}{'n':>5}" + "".join(f"{n[:11]:>12}" for n in names)]
        for task, row in per_task.items():
            lines.append(f"{task[:21]:<22}{row['prompts']:>5}"
                         + "".join(f"{row['routers'][n]['quality']:>12.4f}" for n in names))
    if "capacity" in report:
        cfg = report["capacity"]["config"]
        caps = ", ".join(f"{a}={c}" for a, c in cfg["capacities"].items() if c is not None)
        lines += ["", f"capacity-limited (PromptEnv: {cfg['num_routers']} routers x {cfg['num_worlds']} worlds, "
                      f"{cfg['steps']} steps, seed {cfg['seed']}, congestion_weight={cfg['congestion_weight']:g}; "
                      f"capacity {caps})",
                  f"{'router':<18}{'quality':>9}{'USD/1k':>11}{'reward':>9}{'congestion':>12}"]
        for name, m in report["capacity"]["routers"].items():
            lines.append(f"{name:<18}{m['quality']:>9.4f}{m['cost_usd_per_1k']:>11.5f}{m['reward']:>9.4f}"
                         f"{m['congestion']:>12.4f}")
    g = report.get("goals", {})
    if g:
        lines.append("")
        if "quality_vs_knn" in g:
            v = g["quality_vs_knn"]
            lines.append(f"goal quality >= kNN at <= cost: {'met' if v['met'] else 'not met'} "
                         f"({v['policy_quality']:.4f} vs {v['knn_quality']:.4f}, "
                         f"{v['policy_cost_usd_per_1k']:.5f} vs {v['knn_cost_usd_per_1k']:.5f} USD/1k)")
        if "aiq" in g:
            v = g["aiq"]
            lines.append(f"goal AIQ above every baseline: {'met' if v['met'] else 'not met'} "
                         f"({v['policy']:.4f} vs {v['best_baseline']} {v['best_baseline_aiq']:.4f})")
        if "capacity_reward" in g:
            v = g["capacity_reward"]
            lines.append(f"goal capacity reward >= 1.1x load-aware greedy: {'met' if v['met'] else 'not met'} "
                         f"({v['policy']:.4f} vs {v['load_greedy']:.4f}, {100 * v['relative_gain']:+.1f}%)")
    return "\n".join(lines)


def to_json(report: Mapping[str, Any]) -> str:
    """One line of JSON; non-finite floats become null."""

    return json.dumps(finite_or_null(report))
