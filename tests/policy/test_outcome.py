"""The outcome actor (``policy/outcome.py``): logits ``(q̂ - λ ĉ) / temperature`` at the
observation's own cost weight, a greedy choice monotone in the predicted cost for any weights, a
checkpoint round trip, and the fit (``training/outcome_fit.py``) on data with a known answer."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from contract.observation import ObsLayout, build_obs
from contract.policy_meta import NetworkMeta
from contract.pricing import AgentPrice
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.networks import NetworkShape, build_networks
from policy.outcome import OutcomeActor
from tests.harness import checkpoint_content
from training.outcome_fit import OutcomeFitConfig, fit_outcome_critic, outcome_features

PRICES = (AgentPrice(price_per_1m_tokens=30.0), AgentPrice(price_per_1m_tokens=3.0),
          AgentPrice(price_per_1m_tokens=0.3), AgentPrice(cost_per_call_usd=0.002))


def _layout(embed_dim: int = 8, cost_weight_max: float = 1e6) -> ObsLayout:
    return ObsLayout(embed_dim=embed_dim, num_agents=len(PRICES), cost_preference=True,
                     cost_weight_max=cost_weight_max, agent_prices=PRICES, cost_scale_usd=1e-3)


def _actor(layout: ObsLayout, seed: int = 0, members: int = 2) -> OutcomeActor:
    torch.manual_seed(seed)
    network = NetworkMeta(hidden=(16,), actor="outcome", outcome_members=members)
    actor, _ = build_networks(network, NetworkShape.of_layout(layout))
    assert isinstance(actor, OutcomeActor)
    return actor.eval()


def _obs(layout: ObsLayout, embedding: torch.Tensor, tokens: torch.Tensor, cost_weight: float) -> torch.Tensor:
    return build_obs(layout, embedding, None, 0, cost_weight, tokens)


def test_logits_are_the_critic_reward_at_the_request_cost_weight():
    layout = _layout()
    actor = _actor(layout)
    emb, tokens = torch.randn(32, 8), torch.randint(1, 4000, (32,))
    for weight in (0.0, 3.5, 250.0, 9e5):
        obs = _obs(layout, emb, tokens, weight)
        quality, cost = actor.outcome(obs)
        expected = (quality - weight * cost) / actor.temperature
        assert torch.allclose(actor(obs), expected, rtol=1e-4, atol=1e-3)
    # a mask gives a masked agent probability 0
    mask = torch.ones(32, 1, len(PRICES), dtype=torch.bool)
    mask[..., 0] = False
    assert (actor.distribution(_obs(layout, emb, tokens, 0.0), mask).probs[..., 0] == 0).all()


@pytest.mark.parametrize("seed", range(5))
def test_a_larger_cost_weight_never_picks_an_agent_of_larger_predicted_cost(seed):
    """For arbitrary weights: each prompt's greedy choice has a non-increasing predicted cost
    along a sweep of cost weights (policy/outcome.py's argument)."""
    layout = _layout()
    actor = _actor(layout, seed)
    with torch.no_grad():  # spread the quality estimates so that choices do move along the sweep
        for member in actor.critic.members:
            member[-1].weight.mul_(30.0)
    gen = torch.Generator().manual_seed(seed)
    emb, tokens = torch.randn(200, 8, generator=gen), torch.randint(1, 4000, (200,), generator=gen)
    sweep = [0.0, *np.geomspace(0.1, 1e6, 40).tolist()]
    costs, choices = [], []
    for weight in sweep:
        obs = _obs(layout, emb, tokens, weight)
        choice = actor(obs).argmax(-1)
        costs.append(actor.outcome(obs)[1].gather(-1, choice.unsqueeze(-1)).squeeze(-1))
        choices.append(choice)
    assert len({tuple(c.flatten().tolist()) for c in choices}) > 3  # the sweep does change decisions
    for a, b in itertools.pairwise(costs):
        assert (b <= a * (1 + 1e-5)).all()


def test_a_weight_above_the_layout_maximum_routes_at_the_maximum():
    layout = _layout(cost_weight_max=100.0)
    actor = _actor(layout)
    emb, tokens = torch.randn(16, 8), torch.randint(1, 4000, (16,))
    assert torch.equal(actor(_obs(layout, emb, tokens, 5000.0)), actor(_obs(layout, emb, tokens, 100.0)))
    assert actor.cost_weight(_obs(layout, emb, tokens, 37.0)).flatten()[0].item() == pytest.approx(37.0, rel=1e-4)


def test_checkpoint_round_trip_keeps_the_decisions(tmp_path):
    layout = _layout(embed_dim=384)
    actor = _actor(layout, members=3)
    content = checkpoint_content([f"a{i}" for i in range(len(PRICES))])
    content |= {"obs_layout": layout.model_dump(mode="json"),
                "network": {"hidden": [16], "actor": "outcome", "outcome_members": 3}}
    _, critic = build_networks(NetworkMeta(**content["network"]), NetworkShape.of_layout(layout))
    path = save_checkpoint(tmp_path, actor, critic, content)
    policy = load_checkpoint(path)
    assert isinstance(policy.actor, OutcomeActor) and len(policy.actor.critic.members) == 3
    obs = _obs(layout, torch.randn(8, 384), torch.randint(1, 4000, (8,)), 40.0)
    assert torch.equal(policy.actor(obs), actor(obs))
    assert torch.allclose(policy.probabilities(obs), torch.softmax(actor(obs), -1))


def test_the_fit_learns_a_known_quality_and_cost():
    """Quality is a known function of the embedding and cost a known function of the length: the
    fitted actor routes held-out prompts close to the oracle at every cost weight."""
    layout = _layout(embed_dim=6)
    gen = np.random.default_rng(0)
    n = 3000
    emb = gen.normal(size=(n, 6)).astype(np.float32)
    tokens = gen.integers(10, 3000, size=n)
    quality = 1 / (1 + np.exp(-np.stack([2 * emb[:, 0], emb[:, 1] - 1, -emb[:, 0], 0.5 * emb[:, 2]], 1)))
    cost = layout.expected_costs(tokens) * np.exp(gen.normal(0, 0.1, size=(n, len(PRICES))))
    actor = _actor(layout, members=2)
    x = outcome_features(layout, emb, tokens)
    train, test = slice(0, 2500), slice(2500, None)
    fit = fit_outcome_critic(actor.critic, x[train], torch.tensor(quality[train], dtype=torch.float32),
                             torch.tensor(cost[train], dtype=torch.float32), seed=0,
                             cfg=OutcomeFitConfig(max_epochs=60))
    assert len(fit["epochs"]) == 2 and max(fit["holdout_quality_mse"]) < 0.01  # the quality variance is about 0.04
    rows = np.arange(n)[test]
    for weight in (0.0, 30.0, 300.0, 3000.0):
        obs = _obs(layout, torch.tensor(emb[test]), torch.tensor(tokens[test]), weight)
        choice = actor(obs)[:, 0].argmax(-1).numpy()
        oracle = (quality[test] - weight * cost[test]).max(1)
        got = quality[rows, choice] - weight * cost[rows, choice]
        assert got.mean() >= oracle.mean() - 0.02, weight


def test_outcome_fit_refuses_mismatched_shapes():
    layout = _layout()
    actor = _actor(layout)
    with pytest.raises(ValueError, match="outcome fit"):
        fit_outcome_critic(actor.critic, torch.zeros(10, 9), torch.zeros(10, 3), torch.ones(10, 3), seed=0)
