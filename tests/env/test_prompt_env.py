import math

import pytest
import torch

from env.checks import check_env_specs
from env.config import EnvConfig
from env.prompt_env import PromptEnv


def make_env(capacity, num_routers=3, num_worlds=1, episode_len=4, **cfg):
    # 3 prompts x 2 agents; embeddings are one-hot so obs are easy to read
    quality = torch.tensor([[1.0, 0.5], [0.0, 1.0], [0.2, 0.2]])
    cost = torch.tensor([[0.01, 0.001], [0.02, 0.002], [0.03, 0.003]])
    config = EnvConfig(num_worlds=num_worlds, num_routers=num_routers, episode_len=episode_len, **cfg)
    return PromptEnv(torch.eye(3), quality, cost, capacity, config)


def test_specs_hold_over_a_random_rollout():
    env = make_env([1, None], num_worlds=8, congestion_weight=0.5, cost_weight=10.0, include_agent_id=True,
                   agent_down_prob=0.4)
    check_env_specs(env)
    assert env.observation_spec.shape == (8, 3, 3 + 2 + 3)
    assert env.state_spec.shape == (8, 3 * 8)


def test_queue_arithmetic_hand_worked():
    # capacity: agent 0 serves 1 request per step, agent 1 serves 2
    env = make_env([1, 2], congestion_weight=1.0, reward_sharing="individual")
    env.reset(seed=0)
    env.prompt_idx = torch.tensor([[0, 1, 2]])
    out = env.step(torch.tensor([[0, 0, 1]]))
    # arrivals [2, 1]: queue0 = max(0, 0+2-1) = 1, queue1 = max(0, 0+1-2) = 0
    assert env.queue.tolist() == [[1.0, 0.0]]
    # load = queue / capacity = [1, 0]; obs carries it after the embedding
    assert out.final_obs[0, 0, 3:].tolist() == [1.0, 0.0]
    # reward = quality - 0 * cost - 1 * load of the chosen agent
    assert out.reward[0].tolist() == pytest.approx([1.0 - 1.0, 0.0 - 1.0, 0.2 - 0.0])

    env.prompt_idx = torch.tensor([[0, 0, 0]])
    out = env.step(torch.tensor([[0, 1, 1]]))
    # arrivals [1, 2]: queue0 = max(0, 1+1-1) = 1, queue1 = max(0, 0+2-2) = 0
    assert env.queue.tolist() == [[1.0, 0.0]]
    env.prompt_idx = torch.tensor([[0, 0, 0]])
    env.step(torch.tensor([[0, 0, 0]]))
    # arrivals [3, 0]: queue0 = 1+3-1 = 3 -> load 3; queue1 = 0
    assert env.queue.tolist() == [[3.0, 0.0]]
    assert env.load().tolist() == [[3.0, 0.0]]


def test_load_is_clipped_and_unbounded_capacity_never_queues():
    env = make_env([1, None], num_routers=3, episode_len=10, load_clip=2.0)
    env.reset(seed=0)
    for _ in range(3):
        env.step(torch.tensor([[0, 0, 1]]))
    assert env.queue.tolist() == [[3.0, 0.0]]  # +1 per step
    assert env.load().tolist() == [[2.0, 0.0]]  # clipped


def test_reward_cost_and_team_sharing():
    env = make_env([None, None], num_routers=2, cost_weight=100.0)
    env.reset(seed=0)
    env.prompt_idx = torch.tensor([[0, 1]])
    out = env.step(torch.tensor([[0, 1]]))
    own = [1.0 - 100 * 0.01, 1.0 - 100 * 0.002]
    assert out.quality.tolist() == [[1.0, 1.0]]
    assert out.cost_usd[0].tolist() == pytest.approx([0.01, 0.002])
    team = sum(own) / 2
    assert out.reward[0].tolist() == pytest.approx([team, team])


def test_truncation_bootstraps_and_auto_resets():
    env = make_env([1, None], num_worlds=2, episode_len=3)
    out = env.reset(seed=1)
    for t in range(1, 7):
        out = env.step(torch.zeros(2, 3, dtype=torch.long))
        assert not out.terminated.any()
        assert out.truncated.all() == (t % 3 == 0)
        if t % 3 == 0:
            # the final obs shows the pre-reset backlog (3 arrivals - 1 served, for 3 steps = 6)
            assert out.final_obs[:, 0, 3].tolist() == [4.0, 4.0]  # clipped at load_clip = 4
            assert out.obs[:, 0, 3].tolist() == [0.0, 0.0]  # the reset obs starts empty
            assert torch.equal(out.obs[..., :3], out.final_obs[..., :3])
        else:
            assert torch.equal(out.obs, out.final_obs)


def test_masks_and_bad_actions():
    env = make_env([None, None], num_worlds=64, agent_down_prob=0.5)
    out = env.reset(seed=0)
    assert out.action_mask.any(-1).all()
    assert (~out.action_mask).any(), "with p=0.5 some agent is down somewhere"
    action = out.action_mask.long().argmax(-1)
    env.step(action)  # allowed actions pass
    down = ~env._mask()
    with pytest.raises(ValueError, match="masked"):
        env.step(torch.where(down.any(-1), down.long().argmax(-1), action))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        env.step(torch.full((64, 3), 2))
    with pytest.raises(ValueError, match="shape"):
        env.step(torch.zeros(3, dtype=torch.long))


def test_seeded_reset_is_reproducible():
    a, b = make_env([None, None], num_worlds=16), make_env([None, None], num_worlds=16)
    assert torch.equal(a.reset(seed=3).obs, b.reset(seed=3).obs)
    assert math.isinf(a.capacity[1].item())
