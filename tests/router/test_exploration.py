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


def _fixed_policy(tmp_path, logits):
    """A checkpoint whose distribution is ``softmax(logits)`` whatever the prompt."""
    import torch

    from policy.checkpoint import load_checkpoint, save_checkpoint
    from tests.harness import checkpoint_content, networks_for

    agents = [f"a{k}" for k in range(len(logits))]
    content = checkpoint_content(agents, hidden=(8,))
    actor, critic = networks_for(content)
    last = actor.net.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(logits))
    return load_checkpoint(save_checkpoint(tmp_path, actor, critic, content))


def test_routing_service_samples_with_the_logged_propensity(tmp_path):
    """Through ``RoutingService.route(explore=True)`` with a seeded sampler: the empirical
    frequencies equal the logged propensities (chi-square), masked agents are never drawn, and the
    same seed draws the same agents."""
    from router.service import RoutingService

    policy = _fixed_policy(tmp_path, [2.0, 0.0, -1.0, 0.5])
    embedding = np.ones(384, dtype=np.float32) / np.sqrt(384)
    candidates = ["a0", "a1", "a2"]

    def draw(seed, n):
        service = RoutingService(policy, embedder=None, seed=seed)
        return [service.route("x", candidates=candidates, explore=True, embedding=embedding, explore_floor=0.1)
                for _ in range(n)]

    decisions = draw(seed=0, n=6000)
    mu = exploration_distribution(decisions[0].probabilities, np.array([True, True, True, False]), 0.1)
    counts = np.bincount([d.action for d in decisions], minlength=4)
    assert counts[3] == 0
    for d in decisions:
        assert d.explore and d.propensity == pytest.approx(mu[d.action], abs=1e-12)
        assert d.log_prob == pytest.approx(np.log(d.probabilities[d.action]), abs=1e-6)
    expected = mu[:3] * len(decisions)
    chi2 = float((((counts[:3] - expected) ** 2) / expected).sum())
    assert chi2 < 13.8  # p = 0.001 for 2 degrees of freedom
    assert [d.action for d in draw(seed=0, n=50)] == [d.action for d in decisions[:50]]
    assert [d.action for d in draw(seed=1, n=50)] != [d.action for d in decisions[:50]]
    greedy = RoutingService(policy, embedder=None, seed=0).route("x", embedding=embedding)
    assert greedy.action == 0 and greedy.propensity == 1.0 and not greedy.explore


def test_temperature_flattens_the_policy_before_the_floor():
    probs = np.array([0.8, 0.15, 0.05])
    mask = np.ones(3, dtype=bool)
    root = np.sqrt(probs)
    tempered = root / root.sum()  # T = 2: pi^(1/2), renormalised
    assert exploration_distribution(probs, mask, 0.0, temperature=2.0) == pytest.approx(tempered)
    assert exploration_distribution(probs, mask, 0.05, temperature=2.0) == pytest.approx(0.85 * tempered + 0.05)
    assert exploration_distribution(probs, mask, 0.0, temperature=1.0) == pytest.approx(probs)
    masked = exploration_distribution(np.array([0.6, 0.4, 0.0]), np.array([True, True, False]), 0.0, 3.0)
    assert masked[2] == 0.0 and masked.sum() == pytest.approx(1.0)


def test_tempered_exploration_logs_its_exact_propensity(tmp_path):
    from router.service import RoutingService

    policy = _fixed_policy(tmp_path, [3.0, 0.0, -1.0])
    embedding = np.ones(384, dtype=np.float32) / np.sqrt(384)
    service = RoutingService(policy, embedder=None, seed=0)
    decisions = [service.route("x", explore=True, embedding=embedding, explore_floor=0.01, explore_temperature=3.0)
                 for _ in range(300)]
    mu = exploration_distribution(decisions[0].probabilities, np.ones(3, dtype=bool), 0.01, 3.0)
    assert all(d.propensity == pytest.approx(mu[d.action], abs=1e-12) for d in decisions)
    assert mu[1] > 0.1  # T = 3 gives the runner-up real traffic (the policy itself: about 0.05)


def test_a_seeded_service_draws_the_same_decision_ids_and_an_unseeded_one_uuid4(tmp_path):
    """A seeded run (a benchmark's in-process loop) logs the same ids, so its hashed held-out split
    and everything after it repeat; two services of one seed in one process never share an id; the
    server (no seed) draws uuid4 ids from the OS."""
    import uuid

    from router.service import RoutingService

    policy = _fixed_policy(tmp_path, [2.0, 0.0, -1.0])
    embedding = np.zeros(policy.layout.embed_dim, dtype=np.float32)

    def ids(seed):
        service = RoutingService(policy, embedder=None, seed=seed)
        return [service.route("x", explore=True, embedding=embedding).decision_id for _ in range(5)]

    first, again = ids(3), ids(3)
    assert len(set(first) | set(again)) == 10 and first != ids(4)
    for value in [*first, *ids(None)]:
        assert len(value) == 32 and uuid.UUID(hex=value).version == 4
    assert ids(None) != ids(None)


def test_a_seeded_loop_repeats_in_a_fresh_process(tmp_path):
    """The same seeded services, created in the same order by a new process, draw the same ids."""
    import subprocess
    import sys

    from tests.harness import ROOT

    _fixed_policy(tmp_path, [2.0, 0.0, -1.0])
    code = (
        "import sys, numpy as np\n"
        "from policy.checkpoint import load_checkpoint\n"
        "from router.service import RoutingService\n"
        "policy = load_checkpoint(sys.argv[1])\n"
        "e = np.zeros(policy.layout.embed_dim, dtype=np.float32)\n"
        "print(' '.join(RoutingService(policy, None, seed=s).route('x', explore=True, embedding=e).decision_id "
        "for s in (3, 3, 5)))\n"
    )
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                           timeout=120) for _ in range(2)]
    assert runs[0].returncode == 0, runs[0].stderr
    assert runs[0].stdout == runs[1].stdout and len(set(runs[0].stdout.split())) == 3
