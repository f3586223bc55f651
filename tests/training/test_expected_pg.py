"""The ``expected`` policy-gradient estimator (Mean Actor-Critic): a hand-computed gradient, the
same expected gradient as the sampled estimator, the env's every-action rewards, and learning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from contract.observation import build_obs
from env.config import EnvConfig
from env.prompt_env import PromptEnv
from training.ppo import center_action_advantages, expected_ppo_loss, ppo_loss


def _policy_terms(logits, old_probs, adv, **kw):
    zeros = torch.zeros(logits.shape[:-1])
    probs = torch.softmax(logits, -1)
    entropy = torch.distributions.Categorical(logits=logits).entropy()
    return expected_ppo_loss(probs, old_probs, adv, zeros, zeros, zeros, entropy, 0.2, 0.0, 0.0, **kw)


def test_gradient_matches_the_hand_computed_one():
    """At theta_old: d(-sum_k pi_k A_k)/dz_j = -pi_j (A_j - sum_k pi_k A_k), for pi = (0.5, 0.3, 0.2),
    A = (1, 0, -1): sum pi A = 0.3, so the gradient is -(0.35, -0.09, -0.26)."""
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.2]]])).requires_grad_()
    out = _policy_terms(logits, torch.softmax(logits, -1).detach(), torch.tensor([[[1.0, 0.0, -1.0]]]))
    out.policy_loss.backward()
    torch.testing.assert_close(logits.grad, -torch.tensor([[[0.35, -0.09, -0.26]]]))
    assert out.approx_kl.item() == pytest.approx(0.0, abs=1e-7) and out.clipfrac.item() == 0.0


def test_clipping_stops_the_gradient_outside_the_trust_region():
    old = torch.tensor([[[0.5, 0.5]]])
    logits = torch.log(torch.tensor([[[0.8, 0.2]]])).requires_grad_()  # ratio 1.6 on action 0
    out = _policy_terms(logits, old, torch.tensor([[[1.0, -1.0]]]))
    out.policy_loss.backward()
    assert torch.all(logits.grad == 0)  # both ratios out of [0.8, 1.2] in the improving direction
    assert out.clipfrac.item() == pytest.approx(1.0)
    assert out.approx_kl.item() == pytest.approx(0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2))


def test_same_expected_gradient_as_the_sampled_estimator():
    """The mean of the sampled PPO gradients (actions drawn from pi, each with its advantage)
    converges to the expected estimator's gradient: they are the same expected gradient."""
    torch.manual_seed(0)
    k, m = 4, 400_000
    base = torch.randn(k)
    advantage = torch.tensor([0.7, -0.2, 0.1, -1.3])
    # expected: one state, exact
    logits = base.clone().view(1, 1, k).requires_grad_()
    probs = torch.softmax(logits, -1).detach()
    _policy_terms(logits, probs, advantage.view(1, 1, k)).policy_loss.backward()
    expected = logits.grad.flatten()
    # sampled: m copies of the state, one drawn action each
    many = base.repeat(m, 1).requires_grad_()
    dist = torch.distributions.Categorical(logits=many)
    action = dist.sample()
    log_prob = dist.log_prob(action)
    zeros = torch.zeros(m)
    out = ppo_loss(log_prob, log_prob.detach(), advantage[action], zeros, zeros, zeros, dist.entropy(), 0.2, 0.0, 0.0)
    out.policy_loss.backward()
    sampled = many.grad.sum(0)  # policy_loss is a mean over m: the sum of grads is the mean gradient
    torch.testing.assert_close(sampled, expected, atol=5e-3, rtol=0)


def test_centering_keeps_the_gradient_and_normalises_the_scale():
    probs = torch.tensor([[[0.5, 0.3, 0.2]], [[0.1, 0.1, 0.8]]])
    adv = torch.tensor([[[1.0, 0.0, -1.0]], [[3.0, 3.0, 2.0]]])
    centered = center_action_advantages(adv, probs, normalize=False)
    torch.testing.assert_close((probs * centered).sum(-1), torch.zeros(2, 1))
    normed = center_action_advantages(adv, probs, normalize=True)
    assert (probs * normed**2).sum(-1).mean().item() == pytest.approx(1.0, rel=1e-5)
    grads = []
    for a in (adv, centered):  # a state baseline does not change the gradient
        logits = torch.log(probs).clone().requires_grad_()
        _policy_terms(logits, probs, a).policy_loss.backward()
        grads.append(logits.grad)
    torch.testing.assert_close(grads[0], grads[1])


@pytest.mark.parametrize("sharing", ["individual", "team"])
def test_env_reports_every_agents_reward(sharing):
    quality = torch.tensor([[0.9, 0.2, 0.5], [0.1, 0.8, 0.4]])
    cost = torch.tensor([[0.01, 0.0, 0.02], [0.0, 0.03, 0.0]])
    cfg = EnvConfig(num_worlds=2, num_routers=3, episode_len=4, cost_weight=10.0, congestion_weight=0.5,
                    reward_sharing=sharing)
    env = PromptEnv(torch.eye(2), quality, cost, [1, None, 2], cfg, all_action_rewards=True)
    env.reset(seed=0)
    prompts = env.prompt_idx.clone()
    action = torch.tensor([[0, 0, 2], [1, 2, 0]])
    out = env.step(action)
    assert out.reward_all.shape == (2, 3, 3)
    torch.testing.assert_close(out.reward_all.gather(-1, action.unsqueeze(-1)).squeeze(-1), out.reward)
    # world 0, router 2 (chose agent 2) moving to agent 0: agent 0 then has 3 arrivals at capacity 1,
    # backlog 2 steps; its own reward is quality - 10 * cost - 0.5 * 2
    p = int(prompts[0, 2])
    own = float(quality[p, 0] - 10 * cost[p, 0] - 0.5 * 2.0)
    if sharing == "individual":
        assert out.reward_all[0, 2, 0].item() == pytest.approx(own)
    else:
        individual = out.quality - 10 * out.cost_usd - 0.5 * out.congestion
        assert out.reward_all[0, 2, 0].item() == pytest.approx(out.reward[0, 0].item()
                                                              + (own - individual[0, 2].item()) / 3)
    plain = PromptEnv(torch.eye(2), quality, cost, [1, None, 2], cfg)
    plain.reset(seed=0)
    assert plain.step(action).reward_all is None


def test_expected_estimator_learns_the_best_agent_per_prompt(tmp_path):
    """A bandit with two prompt types: the expected estimator routes each to its best agent."""
    from training.config import TrainConfig
    from training.trainer import MAPPOTrainer

    rng = np.random.default_rng(0)
    emb = np.concatenate([np.tile([1.0, 0.0], (50, 1)), np.tile([0.0, 1.0], (50, 1))]) + 0.01 * rng.standard_normal(
        (100, 2))
    quality = np.zeros((100, 3), dtype=np.float32)
    quality[:50, 0], quality[50:, 2], quality[:, 1] = 1.0, 1.0, 0.5
    cfg = TrainConfig.model_validate({
        "seed": 0, "device": "cpu", "env": {"num_worlds": 32, "episode_len": 4},
        "network": {"hidden": [32]},
        "ppo": {"total_steps": 240, "rollout_len": 4, "gamma": 0.0, "lr": 3e-3, "pg_estimator": "expected"},
    })
    env = PromptEnv(emb, quality, np.zeros_like(quality), [None] * 3, cfg.env, all_action_rewards=True)
    trainer = MAPPOTrainer(cfg, env)
    history = trainer.train()
    with torch.no_grad():
        obs = build_obs(env.layout, torch.as_tensor(emb, dtype=torch.float32))
        best = trainer.actor(obs).argmax(-1).flatten()
    assert (best[:50] == 0).all() and (best[50:] == 2).all()
    assert history[-1]["reward"] > 0.9 and "approx_kl" in history[-1]
    plain = PromptEnv(emb, quality, np.zeros_like(quality), [None] * 3, cfg.env)
    with pytest.raises(ValueError, match="every action's reward"):
        MAPPOTrainer(cfg, plain).collect()
