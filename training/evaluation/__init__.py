"""Evaluation of a routing policy against baselines (``agent-router eval``).

* :mod:`~training.evaluation.curves`: RouterBench's non-decreasing convex hull and AIQ, RouteLLM's
  PGR, APGR and CPT (pure numpy).
* :mod:`~training.evaluation.classifiers`: kNN and MLP predictors on the prompt embeddings,
  routed by willingness to pay.
* :mod:`~training.evaluation.capacity`: any router run in PromptEnv with capacity-limited agents.
* :mod:`~training.evaluation.report`: the whole report (JSON-able dict) and its text tables.
* :mod:`~training.evaluation.plots`: ``pareto.png`` and ``per_task.png``.

The plain offline figures used by training (``summarize``, ``baselines``, ``policy_choices``,
``evaluate``) stay in :mod:`training.evaluation.offline`.
"""

from training.evaluation.capacity import (
    default_steps,
    load_aware_greedy_rule,
    policy_rule,
    random_rule,
    score_in_env,
    score_rule,
)
from training.evaluation.classifiers import QualityPredictor, fit_knn, fit_mlp, fit_predictors, route_wtp, wtp_grid
from training.evaluation.curves import aiq, apgr, cpt, non_decreasing_convex_hull, pgr, shared_cost_range
from training.evaluation.report import capacity_report, format_report, offline_report, run_eval, to_json

__all__ = [
    "QualityPredictor",
    "aiq",
    "apgr",
    "capacity_report",
    "cpt",
    "default_steps",
    "fit_knn",
    "fit_mlp",
    "fit_predictors",
    "format_report",
    "load_aware_greedy_rule",
    "non_decreasing_convex_hull",
    "offline_report",
    "pgr",
    "policy_rule",
    "random_rule",
    "route_wtp",
    "run_eval",
    "score_in_env",
    "score_rule",
    "shared_cost_range",
    "to_json",
    "wtp_grid",
]
