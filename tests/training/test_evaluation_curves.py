"""The curve maths of training.evaluation.curves against hand-computed numbers."""

import math

import numpy as np
import pytest

from training.evaluation.curves import aiq, apgr, cpt, non_decreasing_convex_hull, pgr, shared_cost_range


def test_hull_drops_dominated_and_below_hull_points():
    # (3, .7) lies below the segment (2, .8)-(4, .9); (5, .85) costs more than (4, .9) for less
    c, q = non_decreasing_convex_hull([3, 1, 5, 2, 4], [0.7, 0.5, 0.85, 0.8, 0.9])
    assert c.tolist() == [1, 2, 4]
    assert q.tolist() == [0.5, 0.8, 0.9]


def test_hull_keeps_best_quality_at_equal_cost_and_a_cheap_best_point():
    c, q = non_decreasing_convex_hull([1, 1, 2], [0.2, 0.6, 0.4])
    assert c.tolist() == [1] and q.tolist() == [0.6]
    # collinear middle point is not a vertex
    c, q = non_decreasing_convex_hull([0, 1, 2], [0.0, 0.5, 1.0])
    assert c.tolist() == [0, 2]


def test_aiq_by_hand():
    # hull (1,.5) (2,.8) (4,.9), flat to 5: area .65 + 1.7 + .9 = 3.25 over [1, 5]
    assert aiq([3, 1, 5, 2, 4], [0.7, 0.5, 0.85, 0.8, 0.9], 1, 5) == pytest.approx(3.25 / 4)
    # one point at cost 3: 0 below it, flat to 5: 2 * .6 / 4
    assert aiq([3], [0.6], 1, 5) == pytest.approx(0.3)
    # a point at the top of the range contributes nothing; a degenerate range is the quality
    assert aiq([5], [0.9], 1, 5) == 0.0
    assert aiq([2], [0.7], 2, 2) == pytest.approx(0.7)
    assert shared_cost_range([([3, 1], [0, 0]), ([5], [1])]) == (1.0, 5.0)


def test_aiq_dominating_router_scores_higher():
    lo, hi = 1.0, 4.0
    better = aiq([1, 2, 4], [0.6, 0.9, 0.95], lo, hi)
    worse = aiq([1, 2, 4], [0.5, 0.8, 0.95], lo, hi)
    assert better > worse


def test_pgr():
    assert pgr(0.6, 0.5, 0.7) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        pgr(0.6, 0.5, 0.5)


def test_random_router_apgr_is_half():
    x = np.linspace(0, 1, 5)
    q = 0.4 + 0.4 * x  # weak 0.4, strong 0.8, a straight line
    assert apgr(x, q, 0.4, 0.8) == pytest.approx(0.5)
    assert cpt(x, q, 0.4, 0.8, 0.5) == pytest.approx(0.5)
    assert cpt(x, q, 0.4, 0.8, 0.8) == pytest.approx(0.8)
    # one point of the uniform random router, anchored at all-weak and all-strong
    assert apgr([0.5], [0.6], 0.4, 0.8) == pytest.approx(0.5)


def test_perfect_router_apgr_and_cpt():
    # 10 prompts: weak right on 5, strong right on 7 (a superset): the optimal router sends the 2
    # prompts only strong gets right first: (0, .5) (.1, .6) (.2, .7), then flat at .7
    x, q = [0.0, 0.1, 0.2, 0.6, 1.0], [0.5, 0.6, 0.7, 0.7, 0.7]
    # PGR 0, .5, 1, 1, 1: area .025 + .075 + .8
    assert apgr(x, q, 0.5, 0.7) == pytest.approx(0.9)
    assert cpt(x, q, 0.5, 0.7, 0.5) == pytest.approx(0.1)
    assert cpt(x, q, 0.5, 0.7, 0.8) == pytest.approx(0.16)


def test_cpt_unreached_target_is_nan_and_bad_fractions_raise():
    assert math.isnan(cpt([0.0, 1.0], [0.5, 0.7], 0.5, 0.7, 1.5))
    with pytest.raises(ValueError):
        apgr([1.5], [0.6], 0.5, 0.7)
