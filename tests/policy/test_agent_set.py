"""Adding an agent keeps what the policy computed for the others (actor, critic, reward critic), for
every architecture; retiring one keeps its index; bad changes are refused."""

from __future__ import annotations

import json

import pytest
import torch

from contract.observation import build_obs
from contract.policy_meta import NetworkMeta, parse_policy_meta
from env.dataset import AgentSpec
from policy.agent_set import AgentSetError, add_agent, retire_agent
from policy.artefact import Policy
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.networks import NetworkShape, build_networks
from training.cold_start import init_policy

E = 8


def _agents(tmp_path, priced: bool) -> list[dict]:
    agents = [{"name": f"agent-{k}", **({"price_per_1m_tokens": 1.0 + k} if priced else {})} for k in range(3)]
    (tmp_path / "agents.json").write_text(json.dumps(agents))
    return agents


def _policy(tmp_path, priced: bool, share: bool, centralised: bool) -> Policy:
    _agents(tmp_path, priced)
    cold = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "cold", embed_dim=E,
                                       cost_weight=50.0 if priced else 0.0))
    network = NetworkMeta(hidden=(16, 16), share_params=share, centralised_critic=centralised, reward_critic=True)
    torch.manual_seed(1)
    actor, critic = build_networks(network, NetworkShape.of_layout(cold.layout))
    with torch.no_grad():
        for p in [*actor.parameters(), *critic.parameters()]:
            p.add_(torch.randn_like(p) * 0.3)
        cold.reward_critic.weight.normal_()
        cold.reward_critic.covariance.copy_(torch.eye(E + 2 if priced else E + 1).expand_as(
            cold.reward_critic.covariance) * torch.tensor([0.1, 0.2, 0.3])[:, None, None])
    meta = cold.meta.model_copy(update={"network": network})
    return Policy(cold.path, meta, actor, critic, cold.reward_critic)


@pytest.mark.parametrize("priced", [False, True])
@pytest.mark.parametrize(("share", "centralised"), [(True, True), (False, True), (True, False), (False, False)])
def test_an_added_agent_leaves_the_other_agents_as_they_were(tmp_path, priced, share, centralised):
    policy = _policy(tmp_path, priced, share, centralised)
    spec = AgentSpec(name="newcomer", price_per_1m_tokens=0.5 if priced else None, prior_quality=None)
    actor, critic, reward_critic, content = add_agent(policy, spec)
    content["version"] = "grown"
    path = save_checkpoint(tmp_path / "checkpoints", actor, critic, content, reward_critic)
    grown = load_checkpoint(path)
    assert grown.agents == [*policy.agents, "newcomer"] and grown.layout.num_agents == 4
    gen = torch.Generator().manual_seed(0)
    emb = torch.nn.functional.normalize(torch.randn(32, E, generator=gen), dim=-1)
    load = torch.rand(32, 3, generator=gen)
    tokens = torch.randint(1, 2000, (32,), generator=gen) if priced else None
    old_obs = build_obs(policy.layout, emb, load, 0, None, tokens)
    new_obs = build_obs(grown.layout, emb, torch.cat([load, torch.rand(32, 1, generator=gen)], 1), 0, None, tokens)
    with torch.no_grad():
        old_logits, new_logits = policy.actor(old_obs), grown.actor(new_obs)
        assert torch.allclose(new_logits[..., :3], old_logits, atol=1e-5)
        # the actor starts it below the least favoured agent's base logit: exploration, not the
        # actor, tries it first (a cheaper newcomer's smaller cost penalty lifts it where prices count)
        new_probs = torch.softmax(new_logits, -1)[..., 3]
        assert new_probs.mean() < (0.5 if priced else 0.25)
        if not priced:
            assert (new_logits.argmax(-1) != 3).float().mean() > 0.9  # greedy traffic stays where it was
        n = policy.layout.num_routers
        old_state, new_state = old_obs.reshape(32, n * policy.layout.dim), new_obs.reshape(32, n * grown.layout.dim)
        assert torch.allclose(grown.critic(new_obs, new_state), policy.critic(old_obs, old_state), atol=1e-5)
        old_q, new_q = policy.estimated_rewards(old_obs), grown.estimated_rewards(new_obs)
        assert torch.allclose(new_q[..., :3], old_q, atol=1e-6)
        optimistic = float(policy.reward_critic.bias.max())  # the best of the others' intercepts
        assert torch.allclose(new_q[..., 3], torch.full((32, 1), optimistic))
        width = grown.reward_critic.width(new_obs)
        assert torch.allclose(width[..., :3], policy.reward_critic.width(old_obs))
        assert (width[..., 3] >= width[..., 2]).all()  # the widest posterior of the others


def _saved(version: str) -> dict:
    """The fields :func:`save_checkpoint` fills in."""
    return {"format": "agent-router/policy/v2", "version": version, "created_at": "2026-12-06T00:00:00+00:00",
            "weights_sha256": "0" * 64}


def test_bad_changes_are_refused_and_a_retired_agent_keeps_its_index(tmp_path):
    policy = _policy(tmp_path, priced=True, share=True, centralised=True)
    with pytest.raises(AgentSetError, match="exists already"):
        add_agent(policy, AgentSpec(name="agent-1", price_per_1m_tokens=1.0))
    with pytest.raises(AgentSetError, match="needs a price"):
        add_agent(policy, AgentSpec(name="free"))
    content = retire_agent(policy.meta, "agent-0") | _saved("v2")
    meta = parse_policy_meta(content)
    assert meta.agents == policy.agents and meta.retired == ["agent-0"]
    with pytest.raises(AgentSetError, match="retired already"):
        retire_agent(meta, "agent-0")
    with pytest.raises(AgentSetError, match="no agent"):
        retire_agent(meta, "nobody")
    meta = parse_policy_meta(retire_agent(meta, "agent-1") | _saved("v3"))
    with pytest.raises(AgentSetError, match="last one"):
        retire_agent(meta, "agent-2")
    with pytest.raises(AgentSetError, match=r"exists already \(retired\)"):
        add_agent(Policy(policy.path, meta, policy.actor, policy.critic, policy.reward_critic),
                  AgentSpec(name="agent-0", price_per_1m_tokens=1.0))


def test_a_retirement_saved_in_the_same_second_as_its_parent_gets_its_own_version(tmp_path):
    policy = _policy(tmp_path, priced=False, share=True, centralised=True)
    first = save_checkpoint(tmp_path / "root", policy.actor, policy.critic, policy.meta.content(), policy.reward_critic)
    second = save_checkpoint(tmp_path / "root", policy.actor, policy.critic, retire_agent(policy.meta, "agent-0"),
                             policy.reward_critic)  # the same weights: only the metadata changed
    assert first != second  # (in the same second, the name of the first with "-1" after it)
    assert load_checkpoint(second).meta.retired == ["agent-0"] and load_checkpoint(first).meta.retired == []
