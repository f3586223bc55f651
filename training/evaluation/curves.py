"""Cost-quality curves and their areas: RouterBench's AIQ and RouteLLM's PGR, APGR and CPT.

Pure numpy; every function takes plain arrays of operating points, one point per configuration of
a router (a checkpoint trained at one ``cost_weight``, a willingness-to-pay ``λ`` of a classifier,
a threshold on a score). Costs may be in any unit (the report uses USD per 1,000 requests): AIQ
is invariant to the unit because it is normalised by the cost range.

References:
    * RouterBench: Q. J. Hu et al., "RouterBench: A Benchmark for Multi-LLM Routing System",
      arXiv 2403.12031 (2024), §3 "Math formulation for router evaluation" (linear interpolation
      of two routers, extrapolation to higher cost, the non-decreasing convex hull, the Zero router
      and AIQ), and its reference implementation ``evaluation/AIQ.py`` of
      github.com/withmartian/routerbench.
    * RouteLLM: I. Ong et al., "RouteLLM: Learning to Route LLMs with Preference Data",
      arXiv 2406.18665 (2024), §2 "Problem formulation", "Evaluation metrics" (PGR, APGR,
      CPT(x%)), and its reference implementation ``routellm/evals/evaluate.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def _points(cost: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cost, dtype=np.float64).reshape(-1)
    q = np.asarray(quality, dtype=np.float64).reshape(-1)
    if c.shape != q.shape or c.size == 0:
        raise ValueError(f"expected as many costs as qualities (at least one), got {c.size} and {q.size}")
    if not (np.isfinite(c).all() and np.isfinite(q).all()):
        raise ValueError("costs and qualities must be finite")
    return c, q


def non_decreasing_convex_hull(cost: Sequence[float] | np.ndarray,
                               quality: Sequence[float] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the non-decreasing convex hull of a router's (cost, quality) points.

    RouterBench (Hu et al. 2024, arXiv 2403.12031, §3): two operating points ``R1``, ``R2`` can be
    mixed (route each prompt with ``R1`` with probability ``t``, else ``R2``), which reaches every
    point of the segment between them (linear interpolation), so a router achieves the upper
    convex hull of its points; and a router can always spend more for the same quality
    (extrapolation), so a point that costs more for less quality than another is dominated. The
    result is the upper concave hull cut at its highest point: quality rises with cost, then stays
    flat (the flat part beyond the last vertex is left implicit).

    Args:
        cost, quality: ``[M]`` floats, one per operating point (any order, duplicates allowed).

    Returns:
        ``(cost [V], quality [V])`` vertices sorted by cost, strictly increasing in both.
    """
    c, q = _points(cost, quality)
    # sort by cost, and at equal cost keep only the best quality
    order = np.lexsort((-q, c))
    c, q = c[order], q[order]
    keep = np.ones(c.size, dtype=bool)
    keep[1:] = c[1:] != c[:-1]
    c, q = c[keep], q[keep]
    # upper hull (Andrew's monotone chain), left to right
    hull: list[int] = []
    for i in range(c.size):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # drop b when it lies on or below the segment a -> i
            cross = (c[b] - c[a]) * (q[i] - q[a]) - (q[b] - q[a]) * (c[i] - c[a])
            if cross >= 0:
                hull.pop()
            else:
                break
        hull.append(i)
    hc, hq = c[hull], q[hull]
    # a concave chain rises to its maximum, then falls: keep the rising part (first maximum)
    top = int(np.argmax(hq))
    return hc[: top + 1], hq[: top + 1]


def hull_quality(hull_cost: np.ndarray, hull_quality_: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """The non-decreasing hull as a function of cost: 0 below its cheapest vertex (no operating
    point is that cheap), linear between vertices, flat after the last one (extrapolation)."""
    at = np.asarray(at, dtype=np.float64)
    value = np.interp(at, hull_cost, hull_quality_)
    return np.where(at < hull_cost[0], 0.0, value)


def shared_cost_range(curves: Sequence[tuple[Sequence[float] | np.ndarray, Sequence[float] | np.ndarray]]
                      ) -> tuple[float, float]:
    """``(c_min, c_max)`` of one table: the lowest and highest cost of any operating point of any
    router in it (RouterBench's AIQ compares routers over one shared cost range)."""
    costs = np.concatenate([_points(c, q)[0] for c, q in curves])
    return float(costs.min()), float(costs.max())


def aiq(cost: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray,
        c_min: float, c_max: float) -> float:
    """Average Improvement in Quality of a router (RouterBench, Hu et al. 2024, arXiv 2403.12031, §3).

    ``AIQ = 1 / (c_max - c_min) * ∫_{c_min}^{c_max} R̃(c) dc`` with ``R̃`` the router's
    non-decreasing convex hull (:func:`non_decreasing_convex_hull`), extended flat to ``c_max``
    and 0 below the router's cheapest operating point, as in RouterBench's ``calc_AIQ`` (which
    integrates each hull from its first point, extends it flat to the largest cost of the table and
    divides by that cost; with every cost above ``c_min`` that is this AIQ times
    ``(c_max - c_min) / c_max``: the same ranking). All routers of one table must use the same
    ``[c_min, c_max]`` (:func:`shared_cost_range`). When ``c_max == c_min`` the AIQ is the hull's
    quality at that cost.

    Args:
        cost, quality: ``[M]`` operating points of the router.
        c_min, c_max: the table's shared cost range.
    """
    hc, hq = non_decreasing_convex_hull(cost, quality)
    if not c_max >= c_min:
        raise ValueError(f"c_max ({c_max}) < c_min ({c_min})")
    if c_max == c_min:
        return float(hull_quality(hc, hq, c_max))
    lo = max(c_min, float(hc[0]))
    if lo >= c_max:
        return 0.0
    inner = hc[(hc > lo) & (hc < c_max)]
    xs = np.concatenate([[lo], inner, [c_max]])
    ys = np.interp(xs, hc, hq)
    area = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2.0))
    return area / (c_max - c_min)


# ------------------------------------------------------------------- RouteLLM (two agents)
def pgr(quality: np.ndarray | float, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance Gap Recovered (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §2):
    ``PGR(R) = (r(R) - r(M_weak)) / (r(M_strong) - r(M_weak))``.

    Raises:
        ValueError: the strong and weak models score the same (the gap is 0).
    """
    gap = q_strong - q_weak
    if gap == 0:
        raise ValueError("the strong and the weak agent have the same quality: PGR is undefined")
    return (np.asarray(quality, dtype=np.float64) - q_weak) / gap


def _call_curve(strong_fraction: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray,
                q_weak: float, q_strong: float) -> tuple[np.ndarray, np.ndarray]:
    """Points sorted by strong-call fraction, anchored at (0, weak) and (1, strong).

    A threshold router's extremes (a threshold above, or below, every score) send every prompt to
    the weak, or to the strong, model; RouteLLM's sweeps include them. A curve that does not reach
    an end (a few checkpoints) is anchored there, so every router's PGR is integrated over
    ``[0, 1]``.
    """
    x, q = _points(strong_fraction, quality)
    if (x < 0).any() or (x > 1).any():
        raise ValueError("strong-call fractions must lie in [0, 1]")
    if not (x == 0).any():
        x, q = np.append(x, 0.0), np.append(q, q_weak)
    if not (x == 1).any():
        x, q = np.append(x, 1.0), np.append(q, q_strong)
    order = np.lexsort((q, x))
    return x[order], q[order]


def apgr(strong_fraction: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray,
         q_weak: float, q_strong: float) -> float:
    """Average PGR (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §2): the area under PGR against
    the fraction of calls to the strong model, ``∫_0^1 PGR(R at x% strong calls) dx``, by the
    trapezoid rule over the router's points as in RouteLLM's ``apgr_metric``
    (``(AUC - AUC_weak) / (AUC_strong - AUC_weak)``). The random router (a straight line from
    weak to strong) has APGR 0.5.

    Args:
        strong_fraction: ``[M]`` fraction in [0, 1] of prompts sent to the strong agent per point.
        quality: ``[M]`` mean quality per point.
        q_weak, q_strong: mean quality of always-weak and always-strong on the same prompts.
    """
    x, q = _call_curve(strong_fraction, quality, q_weak, q_strong)
    y = pgr(q, q_weak, q_strong)
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))


def cpt(strong_fraction: Sequence[float] | np.ndarray, quality: Sequence[float] | np.ndarray,
        q_weak: float, q_strong: float, target: float) -> float:
    """Call-Performance Threshold CPT(x%) (RouteLLM, Ong et al. 2024, arXiv 2406.18665, §2): the
    minimum fraction of calls to the strong model at which the router's PGR reaches ``target``
    (e.g. 0.5 for CPT(50%)), on its curve linearly interpolated between operating points.

    Returns:
        The fraction in [0, 1] (the anchored curve reaches PGR 1 at fraction 1, so any target
        ``<= 1`` is reached); ``nan`` for a target no point reaches.
    """
    x, q = _call_curve(strong_fraction, quality, q_weak, q_strong)
    y = pgr(q, q_weak, q_strong)
    if y[0] >= target:
        return float(x[0])
    for i in range(1, x.size):
        if y[i] >= target:
            if y[i] == y[i - 1]:
                return float(x[i])
            t = (target - y[i - 1]) / (y[i] - y[i - 1])
            return float(x[i - 1] + t * (x[i] - x[i - 1]))
    return math.nan
