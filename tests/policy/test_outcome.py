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
from training.outcome_fit import OutcomeFitConfig, fit_neighbor_member, fit_outcome_critic, outcome_features

PRICES = (AgentPrice(price_per_1m_tokens=30.0), AgentPrice(price_per_1m_tokens=3.0),
          AgentPrice(price_per_1m_tokens=0.3), AgentPrice(cost_per_call_usd=0.002))


def _layout(embed_dim: int = 8, cost_weight_max: float = 1e6) -> ObsLayout:
    return ObsLayout(embed_dim=embed_dim, num_agents=len(PRICES), cost_preference=True,
                     cost_weight_max=cost_weight_max, agent_prices=PRICES, cost_scale_usd=1e-3)


def _actor(layout: ObsLayout, seed: int = 0, members: int = 2, neighbors: bool = False) -> OutcomeActor:
    torch.manual_seed(seed)
    network = NetworkMeta(hidden=(16,), actor="outcome", outcome_members=members, outcome_neighbors=neighbors)
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


def _fit_neighbors(actor: OutcomeActor, train: int, seed: int = 0) -> None:
    """Give ``actor``'s kNN member ``train`` random prompts, random qualities and their agents'
    expected costs."""
    layout, gen = actor.layout, torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, 4000, (train,), generator=gen).numpy()
    x = outcome_features(layout, torch.randn(train, layout.embed_dim, generator=gen).numpy(), tokens)
    cost = actor.critic.fit_cost_scale(torch.tensor(layout.expected_costs(tokens), dtype=torch.float32))
    fit_neighbor_member(actor.critic, x, torch.cat([torch.rand(train, len(PRICES), generator=gen), cost], 1))


@pytest.mark.parametrize("neighbors", [False, True], ids=["mlps", "mlps and a knn"])
def test_checkpoint_round_trip_keeps_the_decisions(tmp_path, neighbors):
    layout = _layout(embed_dim=384)
    actor = _actor(layout, members=3, neighbors=neighbors)
    if neighbors:
        _fit_neighbors(actor, train=300)
    content = checkpoint_content([f"a{i}" for i in range(len(PRICES))])
    content |= {"obs_layout": layout.model_dump(mode="json"),
                "network": {"hidden": [16], "actor": "outcome", "outcome_members": 3, "outcome_neighbors": neighbors}}
    _, critic = build_networks(NetworkMeta(**content["network"]), NetworkShape.of_layout(layout))
    path = save_checkpoint(tmp_path, actor, critic, content)
    policy = load_checkpoint(path)
    assert isinstance(policy.actor, OutcomeActor) and len(policy.actor.critic.members) == 3
    if neighbors:  # the kNN member's train set, sized by the checkpoint
        assert policy.actor.critic.neighbor_x.shape == (300, 384)
        assert policy.actor.critic.neighbor_k.item() == actor.critic.neighbor_k.item()
    obs = _obs(layout, torch.randn(8, 384), torch.randint(1, 4000, (8,)), 40.0)
    assert torch.equal(policy.actor(obs), actor(obs))
    assert torch.allclose(policy.probabilities(obs), torch.softmax(actor(obs), -1))


@pytest.mark.parametrize("neighbors", [False, True], ids=["mlps", "mlps and a knn"])
def test_the_fit_learns_a_known_quality_and_cost(neighbors):
    """Quality is a known function of the embedding and cost a known function of the length: the
    fitted actor routes held-out prompts close to the oracle at every cost weight."""
    layout = _layout(embed_dim=6)
    gen = np.random.default_rng(0)
    n = 3000
    emb = gen.normal(size=(n, 6)).astype(np.float32)
    tokens = gen.integers(10, 3000, size=n)
    quality = 1 / (1 + np.exp(-np.stack([2 * emb[:, 0], emb[:, 1] - 1, -emb[:, 0], 0.5 * emb[:, 2]], 1)))
    cost = layout.expected_costs(tokens) * np.exp(gen.normal(0, 0.1, size=(n, len(PRICES))))
    actor = _actor(layout, members=2, neighbors=neighbors)
    x = outcome_features(layout, emb, tokens)
    train, test = slice(0, 2500), slice(2500, None)
    fit = fit_outcome_critic(actor.critic, x[train], torch.tensor(quality[train], dtype=torch.float32),
                             torch.tensor(cost[train], dtype=torch.float32), seed=0,
                             cfg=OutcomeFitConfig(max_epochs=60))
    assert len(fit["epochs"]) == 2 and max(fit["holdout_quality_mse"]) < 0.01  # the quality variance is about 0.04
    assert ("neighbors" in fit) == neighbors
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


def test_the_knn_member_is_scikit_learns_knn_regression():
    """The kNN member against the reference: scikit-learn's brute-force ``KNeighborsRegressor`` at
    the chosen ``k``, and its leave-one-out errors against ``NearestNeighbors`` with each prompt
    itself left out; it is one more member of the ensemble's mean."""
    from sklearn.neighbors import KNeighborsRegressor, NearestNeighbors

    layout = _layout(embed_dim=5)
    actor = _actor(layout, members=2, neighbors=True)
    gen = np.random.default_rng(3)
    n = 400
    emb = gen.normal(size=(n, 5)).astype(np.float32)
    # a target that depends on the embedding, so leave-one-out prefers some k over others
    y = np.concatenate([np.tanh(emb[:, :4]) * 0.5 + 0.5 + gen.normal(0, 0.2, (n, 4)), gen.normal(size=(n, 4))], 1)
    x = outcome_features(layout, emb, gen.integers(1, 4000, size=n))
    k, errors = fit_neighbor_member(actor.critic, x, torch.tensor(y, dtype=torch.float32), grid=(1, 5, 25, 50),
                                    chunk=64)
    assert set(errors) == {1, 5, 25, 50} and k == min(errors, key=errors.get)
    idx = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(emb).kneighbors(emb, return_distance=False)
    loo = np.stack([y[row[row != i][:k], :4].mean(0) for i, row in enumerate(idx)])
    assert errors[k] == pytest.approx(float(((loo - y[:, :4]) ** 2).mean()), rel=1e-4)

    queries = gen.normal(size=(50, 5)).astype(np.float32)
    qx = outcome_features(layout, queries, gen.integers(1, 4000, size=50))
    reference = KNeighborsRegressor(n_neighbors=k, algorithm="brute").fit(emb, y).predict(queries)
    with torch.no_grad():
        got = actor.critic.neighbor_member(qx).numpy()
        raw = actor.critic.raw(qx)
    assert np.allclose(got, reference, atol=1e-5)
    assert raw.shape == (3, 50, 8) and torch.allclose(raw[2], torch.tensor(got))


def test_a_knn_member_refuses_what_it_cannot_use():
    layout = _layout(embed_dim=5)
    with pytest.raises(RuntimeError, match="not fitted"):
        _actor(layout, neighbors=True)(_obs(layout, torch.randn(2, 5), torch.tensor([5, 6]), 0.0))
    with pytest.raises(ValueError, match="no kNN member"):
        _fit_neighbors(_actor(layout), train=20)
    with pytest.raises(ValueError, match="at least 2"):
        fit_neighbor_member(_actor(layout, neighbors=True).critic, torch.zeros(1, 6), torch.zeros(1, 8))
