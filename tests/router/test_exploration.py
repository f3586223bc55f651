"""The exploration distribution of ``explore=true``: a floor on each allowed agent's probability."""

from __future__ import annotations

import numpy as np
import pytest

from router.service import exploration_distribution


def test_floor_holds_and_masked_agents_stay_zero():
    probs = np.array([0.97, 0.01, 0.02, 0.0], dtype=np.float32)
    mask = np.array([True, True, True, False])
    mu = exploration_distribution(probs, mask, floor=0.05)
    assert mu.sum() == pytest.approx(1.0)
    assert mu[3] == 0.0
    assert (mu[:3] >= 0.05 - 1e-12).all()
    # alpha = 0.15 of uniform over 3 agents, 0.85 of the policy
    assert mu == pytest.approx([0.85 * 0.97 + 0.05, 0.85 * 0.01 + 0.05, 0.85 * 0.02 + 0.05, 0.0])


def test_zero_floor_is_the_policy_and_a_large_floor_is_uniform():
    probs = np.array([0.7, 0.2, 0.1])
    mask = np.ones(3, dtype=bool)
    assert exploration_distribution(probs, mask, 0.0) == pytest.approx(probs)
    assert exploration_distribution(probs, mask, 0.5) == pytest.approx([1 / 3] * 3)


def test_sampling_matches_the_logged_propensity():
    """Empirical frequencies of the sampled agents equal the propensities (chi-square, 4 agents)."""
    rng = np.random.default_rng(0)
    mu = exploration_distribution(np.array([0.9, 0.1, 0.0, 0.0]), np.array([True, True, True, False]), 0.1)
    draws = rng.choice(4, size=20000, p=mu)
    counts = np.bincount(draws, minlength=4)
    assert counts[3] == 0
    expected = mu[:3] * len(draws)
    chi2 = float((((counts[:3] - expected) ** 2) / expected).sum())
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom
