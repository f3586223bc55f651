"""The trainer on a small synthetic routing game (no embeddings), for every critic/sharing layout."""

import pytest
import torch

from env.prompt_env import PromptEnv
from training.config import load_config
from training.trainer import MAPPOTrainer


def congestion_game(cfg, seed=0):
    """2 agents: 'big' is better on every prompt but serves 1 request per step; 'small' is unbounded.

    With 4 routers per world, sending everything to 'big' builds a queue that costs more than the
    quality gained: the team has to learn to split the traffic.
    """
    g = torch.Generator().manual_seed(seed)
    emb = torch.nn.functional.normalize(torch.randn(64, 16, generator=g), dim=-1)
    quality = torch.stack([torch.full((64,), 0.9), torch.full((64,), 0.6)], dim=1)
    return PromptEnv(emb, quality, torch.zeros(64, 2), [1, None], cfg.env, seed=seed, validate_actions=False)


def _cfg(**extra):
    base = {"env.num_worlds": 32, "env.num_routers": 4, "env.episode_len": 8, "env.congestion_weight": 0.5,
            "env.include_agent_id": True, "network.hidden": "[32, 32]", "ppo.rollout_len": 8,
            "ppo.total_steps": 8 * 60, "ppo.lr": 3e-3, "ppo.gamma": 0.9, "ppo.ent_coef": 0.003, "seed": 1}
    base.update(extra)
    return load_config(None, [f"{k}={v}" for k, v in base.items()])


@pytest.mark.parametrize("centralised", [True, False], ids=["mappo", "ippo"])
@pytest.mark.parametrize("share", [True, False], ids=["shared", "separate"])
def test_every_layout_learns_to_split_traffic(centralised, share):
    cfg = _cfg(**{"network.centralised_critic": centralised, "network.share_params": share})
    trainer = MAPPOTrainer(cfg, congestion_game(cfg))
    history = trainer.train()
    assert len(history) == 60
    for m in history:
        assert all(v == v for k, v in m.items() if k != "episode_reward"), m  # no NaN
    early = sum(m["reward"] for m in history[:5]) / 5
    late = sum(m["reward"] for m in history[-5:]) / 5
    assert late > early + 0.02, (early, late)
    # the best split sends ~1 of 4 requests per step to 'big': far from all and far from none
    with torch.no_grad():
        out = trainer.env.reset(seed=3)
        share_big = (trainer.actor(out.obs, out.action_mask).argmax(-1) == 0).float().mean().item()
    assert 0.05 < share_big < 0.75, share_big


def test_same_seed_same_metrics():
    runs = []
    for _ in range(2):
        cfg = _cfg(**{"ppo.total_steps": 8 * 4})
        torch.manual_seed(cfg.seed)
        runs.append(MAPPOTrainer(cfg, congestion_game(cfg)).train())
    keys = ("reward", "policy_loss", "value_loss", "approx_kl")
    assert [[m[k] for k in keys] for m in runs[0]] == [[m[k] for k in keys] for m in runs[1]]


def test_buffer_is_preallocated_and_reused():
    cfg = _cfg(**{"ppo.total_steps": 8 * 2})
    trainer = MAPPOTrainer(cfg, congestion_game(cfg))
    ptr = trainer.buffer.obs.data_ptr()
    trainer.train()
    assert trainer.buffer.obs.data_ptr() == ptr
    assert trainer.buffer.obs.shape == (8, 32, 4, 16 + 2 + 4)
