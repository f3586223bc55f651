"""One observation layout: PromptEnv, the checkpoint, the server and the retrain job build the same
obs, to the last float, from the same parts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from contract.experience import SCHEMA_VERSION, ExperienceRecord, encode_embedding, parse_record
from contract.observation import TOKEN_SCALE, ObsLayout, build_obs, normalised_load
from contract.pricing import AgentPrice, call_cost_usd, prompt_tokens
from env.config import EnvConfig
from env.prompt_env import PromptEnv
from tests.harness import checkpoint_content, networks_for, sample_context, sample_feedback


def test_layout_columns_and_builder():
    layout = ObsLayout(embed_dim=3, num_agents=2, num_routers=2, include_agent_id=True, load_clip=4.0)
    assert layout.dim == 7 and layout.state_dim == 14 and layout.parts == ("embedding", "load", "router_id")
    emb = torch.tensor([[1.0, 2.0, 3.0]])
    obs = build_obs(layout, emb, torch.tensor([[0.5, 4.0]]), router=1)
    assert obs.tolist() == [[[1.0, 2.0, 3.0, 0.5, 4.0, 0.0, 1.0]]]
    both = build_obs(layout, emb.unsqueeze(1).expand(1, 2, 3))
    assert both[0, :, 5:].tolist() == [[1.0, 0.0], [0.0, 1.0]]
    with pytest.raises(ValueError, match="embedding has 4 dims"):
        build_obs(layout, torch.zeros(1, 4))
    with pytest.raises(ValueError, match="obs_dim"):
        ObsLayout(embed_dim=3, num_agents=2, obs_dim=6)


def test_prompt_features_columns_penalty_and_actor_columns():
    prices = (AgentPrice(price_per_1m_tokens=2.0), AgentPrice(cost_per_call_usd=0.01))
    layout = ObsLayout(embed_dim=3, num_agents=2, cost_preference=True, cost_weight_max=100.0,
                       agent_prices=prices, cost_scale_usd=1e-3, include_agent_id=True)
    assert layout.parts == ("embedding", "load", "prompt_tokens", "expected_cost", "cost_penalty",
                            "cost_preference", "router_id")
    assert layout.dim == 3 + 2 + 1 + 2 + 2 + 1 + 1
    tokens = prompt_tokens("x" * 41)  # 11 tokens
    cost = [call_cost_usd(p, tokens) for p in prices]
    assert cost == pytest.approx([2.0 * (11 + 256) / 1e6, 0.01])
    obs = build_obs(layout, torch.ones(1, 3), cost_weight=50.0, tokens=torch.tensor([tokens]))[0, 0]
    assert obs[layout.cols("prompt_tokens")].item() == pytest.approx(math.log1p(11) / math.log1p(TOKEN_SCALE))
    assert obs[layout.cols("expected_cost")].tolist() == pytest.approx([math.log1p(c / 1e-3) for c in cost])
    assert obs[layout.cols("cost_penalty")].tolist() == pytest.approx([50.0 * c for c in cost])
    # the actor's network reads neither the penalty nor the preference
    assert layout.actor_columns() == [0, 1, 2, 3, 4, 5, 6, 7, 11]
    with pytest.raises(ValueError, match="pass tokens"):
        build_obs(layout, torch.ones(1, 3))
    with pytest.raises(ValueError, match="cost_scale_usd"):
        ObsLayout(embed_dim=3, num_agents=2, agent_prices=prices)


def test_actor_with_a_penalty_is_monotone_in_cost_weight():
    """Any weights: a larger cost_weight never raises the expected cost of the sampled agent nor
    the cost of the greedy one."""
    from policy.networks import Actor

    torch.manual_seed(0)
    prices = tuple(AgentPrice(price_per_1m_tokens=p) for p in (0.1, 0.5, 2.0, 9.0))
    layout = ObsLayout(embed_dim=8, num_agents=4, cost_preference=True, cost_weight_max=1e3,
                       agent_prices=prices, cost_scale_usd=1e-4)
    actor = Actor(layout.dim, 1, 4, True, (16,), layout.actor_columns(), layout.penalty_cols)
    with torch.no_grad():
        for p in actor.net.parameters():
            p.normal_(0.0, 2.0)  # a sharp, arbitrary policy
    emb, tokens = torch.randn(64, 8), torch.randint(1, 4000, (64,))
    cost = torch.as_tensor(layout.expected_costs(tokens.numpy()), dtype=torch.float32)
    sampled, greedy = [], []
    for w in (0.0, 1.0, 10.0, 100.0, 1e3, 1e4, 1e5):
        probs = actor(build_obs(layout, emb, cost_weight=w, tokens=tokens)).softmax(-1)[:, 0]
        sampled.append((probs * cost).sum(-1))
        greedy.append(cost.gather(1, probs.argmax(-1, keepdim=True))[:, 0])
    for a, b in itertools.pairwise(sampled):
        assert (b <= a + 1e-9).all()
    for a, b in itertools.pairwise(greedy):
        assert (b <= a).all()
    assert (greedy[-1] < greedy[0]).any()


@pytest.mark.parametrize("include_id", [False, True])
def test_prompt_env_checkpoint_and_server_obs_agree(tmp_path, include_id):
    """The env's obs of a prompt under load equals ``Policy.build_obs`` of its embedding and the
    same load, and the serving load of the same backlog."""
    from policy.checkpoint import load_checkpoint, save_checkpoint
    from router.service import RoutingService

    rng = np.random.default_rng(0)
    emb = rng.standard_normal((5, 384)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    caps = [1, None, 2]
    cfg = EnvConfig(num_worlds=1, num_routers=3, episode_len=8, include_agent_id=include_id, load_clip=4.0)
    tokens = [3, 30, 300, 3000, 1]
    prices = [AgentPrice(price_per_1m_tokens=1.0), AgentPrice(cost_per_call_usd=0.002), AgentPrice()]
    env = PromptEnv(emb, np.zeros((5, 3)), np.zeros((5, 3)), caps, cfg, tokens=tokens, agent_prices=prices)
    env.reset(seed=0)
    out = env.step(torch.tensor([[0, 0, 2]]))  # agent 0: 2 arrivals at capacity 1 -> backlog 1
    content = {**checkpoint_content(["a", "b", "c"], capacities=caps), "obs_layout": env.layout.model_dump()}
    policy = load_checkpoint(save_checkpoint(tmp_path, *networks_for(content), content))
    assert policy.layout == env.layout
    for n in range(3):
        prompt = int(env.prompt_idx[0, n])
        mine = policy.build_obs(torch.from_numpy(emb[prompt : prompt + 1]), env.load(), router=n,
                                tokens=torch.tensor([tokens[prompt]]))
        assert torch.equal(mine[0, 0], out.obs[0, n])
    # the server maps 2 requests in flight at capacity 1 (and 1 at capacity 2) to the same load
    service = RoutingService(policy, embedder=None)
    served = service.load_vector({"a": 2, "c": 1})
    assert served.tolist() == env.load()[0].tolist() == normalised_load([2, 0, 1], caps, 4.0).tolist()


def test_experience_records_of_both_schema_versions_parse():
    ctx = sample_context(explore=True, propensity=0.25)
    record = ExperienceRecord.join(ctx, sample_feedback(0.75, cost_usd=0.001))
    assert record.schema_version == SCHEMA_VERSION and record.quality == 0.75
    assert record.behaviour_log_prob() == pytest.approx(np.log(0.25))
    stored = record.to_json_dict()
    assert "prompt" not in stored and parse_record(stored) == record
    # version 1: written before the schema version and before exploration (no propensity)
    v1 = {k: v for k, v in stored.items() if k not in ("schema_version", "propensity")}
    old = parse_record(v1)
    assert old.schema_version == 1 and old.propensity is None
    assert old.behaviour_log_prob() == old.log_prob
    with pytest.raises(ValueError, match="clash"):
        ExperienceRecord.join(ctx, {**sample_feedback().to_json_dict(), "agent": "x"})
    with pytest.raises(ValueError):
        parse_record({**stored, "quality": 1.5})


def test_embedding_codec_round_trips_float16():
    vec = np.linspace(-1, 1, 384, dtype=np.float32)
    back = ExperienceRecord.join(sample_context(embedding=encode_embedding(vec)), sample_feedback()).embedding_vector()
    assert back.dtype == np.float32 and np.abs(back - vec).max() < 1e-3
