"""One policy for every trade-off: each episode draws its cost weight, the observation holds it,
and the reward uses it."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contract.observation import CostWeightError, ObsLayout, build_obs
from env.config import EnvConfig
from env.prompt_env import PromptEnv


def _env(**cfg):
    quality = torch.tensor([[1.0, 0.6], [0.9, 0.2], [0.5, 0.5]])
    cost = torch.tensor([[0.01, 0.001], [0.02, 0.0], [0.0, 0.0]])
    config = EnvConfig(num_worlds=256, num_routers=1, episode_len=2, cost_weight_range=(10.0, 1000.0), **cfg)
    return PromptEnv(torch.eye(3), quality, cost, [None, None], config, seed=0, all_action_rewards=True)


def test_each_world_draws_its_cost_weight_log_uniform_with_zeros():
    env = _env(cost_weight_zero_share=0.25)
    env.reset(seed=1)
    cw = env.cost_weight
    zero = cw == 0
    assert 0.1 < zero.float().mean().item() < 0.4
    logs = torch.log(cw[~zero])
    assert ((cw[~zero] >= 10.0) & (cw[~zero] <= 1000.0)).all()
    # log-uniform: the mean of log(cw) is the middle of [log 10, log 1000]
    assert logs.mean().item() == pytest.approx(math.log(100.0), abs=0.35)
    assert env.layout.cost_preference and env.layout.cost_weight_max == 1000.0 and env.layout.dim == 3 + 2 + 1


def test_obs_reward_and_next_episode_use_the_worlds_own_weight():
    env = _env()
    out = env.reset(seed=0)
    cw = env.cost_weight.clone()
    feature = env.layout.preference_feature(cw)
    torch.testing.assert_close(out.obs[:, 0, env.layout.preference_cols].squeeze(-1), feature)
    action = torch.zeros(256, 1, dtype=torch.long)
    prompts = env.prompt_idx.clone()
    step = env.step(action)
    expected = env.quality[prompts[:, 0], 0] - cw * env.cost_usd[prompts[:, 0], 0]
    torch.testing.assert_close(step.reward[:, 0], expected)
    # every agent's reward at the world's own weight
    all_expected = env.quality[prompts[:, 0]] - cw.unsqueeze(-1) * env.cost_usd[prompts[:, 0]]
    torch.testing.assert_close(step.reward_all[:, 0], all_expected)
    step = env.step(action)  # episode_len 2: truncated, a new episode with new weights
    assert step.truncated.all()
    torch.testing.assert_close(step.final_obs[:, 0, env.layout.preference_cols].squeeze(-1), feature)
    assert not torch.equal(env.cost_weight, cw)
    torch.testing.assert_close(step.obs[:, 0, env.layout.preference_cols].squeeze(-1),
                               env.layout.preference_feature(env.cost_weight))


def test_same_seed_same_weights_and_the_fixed_weight_env_is_unchanged():
    a, b = _env(), _env()
    a.reset(seed=3)
    b.reset(seed=3)
    assert torch.equal(a.cost_weight, b.cost_weight)
    fixed = PromptEnv(torch.eye(3), torch.ones(3, 2), torch.ones(3, 2), [None, None],
                      EnvConfig(num_worlds=4, cost_weight=5.0))
    assert not fixed.layout.cost_preference and fixed.layout.dim == 5
    assert (fixed.cost_weight == 5.0).all()


def test_preference_feature_and_builder():
    layout = ObsLayout(embed_dim=2, num_agents=2, cost_preference=True, cost_weight_max=100.0, default_cost_weight=0.0)
    assert layout.parts == ("embedding", "load", "cost_preference")
    obs = build_obs(layout, torch.ones(3, 2), cost_weight=torch.tensor([0.0, 100.0, 1e6]))
    assert obs[:, 0, 4].tolist() == pytest.approx([0.0, 1.0, 1.0])  # clipped above the trained range
    assert build_obs(layout, torch.ones(1, 2), cost_weight=9.0)[0, 0, 4].item() == pytest.approx(
        math.log1p(9.0) / math.log1p(100.0))
    assert build_obs(layout, torch.ones(1, 2))[0, 0, 4].item() == 0.0  # the default
    plain = ObsLayout(embed_dim=2, num_agents=2)
    with pytest.raises(CostWeightError, match="trained at one cost weight"):
        build_obs(plain, torch.ones(1, 2), cost_weight=1.0)
    with pytest.raises(ValueError, match="cost_weight_max"):
        ObsLayout(embed_dim=2, num_agents=2, cost_preference=True)
    with pytest.raises(ValueError):
        EnvConfig(cost_weight_range=(0.0, 10.0))
    assert np.isfinite(obs.numpy()).all()
