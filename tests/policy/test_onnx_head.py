"""The policy's decision in ONNX Runtime (policy.onnx_head): the same decisions as torch, for
every kind of policy the server loads, and torch whenever the export is unusable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.onnx_head import GRAPH, decision_head, head_key, head_outputs
from router.service import RoutingService
from tests.harness import (
    AGENTS,
    checkpoint_content,
    make_checkpoint,
    networks_for,
    preference_checkpoint,
    priced_checkpoint,
)
from training.cold_start import init_policy

E = 384


def _unshared(parent):
    content = checkpoint_content(hidden=(16,))
    content["obs_layout"] |= {"num_routers": 3, "include_agent_id": True}
    content["network"]["share_params"] = False
    actor, critic = networks_for(content)
    return save_checkpoint(parent, actor, critic, content)


def _cold_start(parent, cost_weight_max=None):
    agents = [{"name": name, "price_per_1m_tokens": 0.1 * (k + 1)} for k, name in enumerate(AGENTS[:5])]
    (parent / "agents.json").write_text(json.dumps(agents))
    path = init_policy(parent / "agents.json", parent / "checkpoints", embed_dim=E, hidden=(32,), seed=3,
                       cost_weight=0.0 if cost_weight_max is None else 10.0, cost_weight_max=cost_weight_max)
    policy = load_checkpoint(path)
    with torch.no_grad():  # a critic that has learned something: estimates that differ per prompt
        for p in policy.reward_critic.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    return policy


def _outcome(parent, neighbors: bool = False):
    from contract.policy_meta import NetworkMeta
    from policy.networks import NetworkShape, build_networks
    from tests.policy.test_outcome import PRICES, _actor, _fit_neighbors, _layout

    layout = _layout(embed_dim=E, cost_weight_max=1000.0)
    content = checkpoint_content([f"a{i}" for i in range(len(PRICES))])
    content |= {"obs_layout": layout.model_dump(mode="json"),
                "network": {"hidden": [16], "actor": "outcome", "outcome_members": 3, "outcome_neighbors": neighbors}}
    _, critic = build_networks(NetworkMeta(**content["network"]), NetworkShape.of_layout(layout))
    actor = _actor(layout, members=3, neighbors=neighbors)
    if neighbors:
        _fit_neighbors(actor, train=200)
    return load_checkpoint(save_checkpoint(parent, actor, critic, content))


POLICIES = {
    "plain": lambda parent: load_checkpoint(make_checkpoint(parent)),
    "live load": lambda parent: load_checkpoint(make_checkpoint(parent, capacities=[2, None, 1, 4, 2, 2, 1, 3, 2])),
    "every trade-off": lambda parent: load_checkpoint(preference_checkpoint(parent)),
    "priced": lambda parent: load_checkpoint(priced_checkpoint(parent)),
    "one network per router": lambda parent: load_checkpoint(_unshared(parent)),
    "cold start, exploring": _cold_start,
    "cold start, every trade-off": lambda parent: _cold_start(parent, cost_weight_max=100.0),
    "outcome actor": _outcome,
    "outcome actor with a knn member": lambda parent: _outcome(parent, neighbors=True),
}


@pytest.mark.parametrize("kind", list(POLICIES))
def test_the_head_decides_as_torch_greedy_and_exploring(kind, tmp_path):
    policy = POLICIES[kind](tmp_path)
    head, how = decision_head(policy, tmp_path / "heads")
    assert head is not None, how
    assert how.startswith("onnxruntime")
    fast, slow = RoutingService(policy, None, seed=7, head=head), RoutingService(policy, None, seed=7)
    rng = np.random.default_rng(1)
    preference = policy.layout.cost_preference
    for i in range(60):
        x = rng.normal(size=E).astype(np.float32)
        kwargs = {"embedding": x / np.linalg.norm(x), "explore": i % 2 == 1,
                  "in_flight": {name: int(rng.integers(0, 6)) for name in policy.agents},
                  "candidates": None if i % 3 else list(rng.choice(policy.agents, size=3, replace=False))}
        if preference:
            kwargs["cost_weight"] = float(rng.uniform(0.0, policy.layout.cost_weight_max))
        a, b = fast.route(f"prompt {i}", **kwargs), slow.route(f"prompt {i}", **kwargs)
        assert a.agent == b.agent
        np.testing.assert_allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert a.propensity == pytest.approx(b.propensity, abs=1e-5)
        assert a.probabilities[~a.action_mask].sum() == 0.0


def test_the_head_of_an_exploring_policy_returns_the_critic_s_estimates(tmp_path):
    policy = _cold_start(tmp_path)
    assert head_outputs(policy) == (True, policy.meta.exploration.optimism > 0)
    head, _ = decision_head(policy, tmp_path / "heads")
    x = np.random.default_rng(0).normal(size=(1, E)).astype(np.float32)
    out = head(x, np.zeros(len(policy.agents), np.float32), np.ones(len(policy.agents), bool), tokens=120)
    obs = policy.build_obs(torch.from_numpy(x), None, tokens=torch.tensor([120]))
    np.testing.assert_allclose(out.reward, policy.estimated_rewards(obs)[0, 0].numpy(), atol=1e-5)


def test_a_restart_reads_the_export_and_another_policy_gets_its_own(tmp_path):
    first = load_checkpoint(make_checkpoint(tmp_path / "a"))
    second = load_checkpoint(make_checkpoint(tmp_path / "b"))  # freshly initialised: other weights
    assert head_key(first) != head_key(second)
    decision_head(first, tmp_path / "heads")
    graph = tmp_path / "heads" / head_key(first) / GRAPH
    written = graph.stat().st_mtime_ns
    head, _ = decision_head(first, tmp_path / "heads")
    assert head is not None and graph.stat().st_mtime_ns == written
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == [head_key(first)]


def test_an_unusable_export_leaves_the_decision_in_torch(tmp_path):
    policy = load_checkpoint(make_checkpoint(tmp_path))
    broken = tmp_path / "heads" / head_key(policy)
    broken.mkdir(parents=True)
    (broken / GRAPH).write_bytes(b"not an onnx graph")
    head, how = decision_head(policy, tmp_path / "heads")
    assert head is None and how.startswith("torch (the policy's ONNX export failed")
    other = load_checkpoint(make_checkpoint(tmp_path / "other"))
    good, _ = decision_head(other, tmp_path / "heads")
    heads = tmp_path / "heads"
    (heads / head_key(policy) / GRAPH).write_bytes((heads / head_key(other) / GRAPH).read_bytes())
    head, how = decision_head(policy, tmp_path / "heads")  # a graph of other weights: caught by the probes
    assert good is not None and head is None and "is not used" in how


def test_the_cache_keeps_the_most_recently_used_exports(tmp_path, monkeypatch):
    import policy.onnx_head

    monkeypatch.setattr(policy.onnx_head, "KEEP", 2)
    a, b, c = (load_checkpoint(make_checkpoint(tmp_path / name)) for name in "abc")
    for p in (a, b, a, c):
        assert decision_head(p, tmp_path / "heads")[0] is not None
    assert sorted(p.name for p in (tmp_path / "heads").iterdir()) == sorted([head_key(a), head_key(c)])
