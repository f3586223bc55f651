"""The learner from logged bandit feedback: the reward critic's fit, the actor's trust-region target,
inverse gap weighting, a round on logged records, and the doubly robust gate's interval."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from contract.experience import ExperienceRecord, Feedback
from policy.checkpoint import META, WEIGHTS, load_checkpoint
from policy.exploration import igw_gamma, inverse_gap_weighting
from policy.networks import RewardCritic
from router.service import RoutingService
from training.cold_start import init_policy
from training.retrain.bandit_round import bandit_round, logged_gate
from training.retrain.config import RetrainConfig
from training.retrain.learner import actor_targets, fit_reward_critic, shared_slope
from training.retrain.offpolicy import logged_verdict, off_policy_terms
from training.retrain.trajectories import LoggedBatch

E, K = 6, 3


def _obs(x: np.ndarray) -> torch.Tensor:
    """``[M, 1, E + K]`` obs of embeddings ``x`` ``[M, E]`` with zero load."""
    return torch.cat([torch.as_tensor(x, dtype=torch.float32), torch.zeros(len(x), K)], dim=1).unsqueeze(1)


def test_reward_critic_recovers_each_agents_linear_reward_and_keeps_the_prior_without_data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, E))
    true_w, true_b = rng.normal(size=(K, E)) * 0.1, np.array([0.2, 0.5, 0.7])
    action = rng.integers(0, K - 1, size=3000)  # agent K-1 is never chosen
    reward = (x * true_w[action]).sum(1) + true_b[action] + rng.normal(scale=0.05, size=3000)
    critic = RewardCritic(K, list(range(E)))
    fit = fit_reward_critic(critic, _obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None],
                            ridge=1.0, prior=[None, None, 0.9])
    assert fit.per_agent[-1] == 0 and fit.records == 3000
    assert torch.allclose(critic.weight[:2], torch.as_tensor(true_w[:2], dtype=torch.float32), atol=0.01)
    assert critic.bias[:2].tolist() == pytest.approx(true_b[:2], abs=0.01)
    assert critic.bias[2].item() == pytest.approx(0.9) and critic.weight[2].abs().max() == 0
    assert fit.mse == pytest.approx(0.05**2, rel=0.1)
    # shrunk towards the shared slope: the agents with data are where their own records say; the one
    # without has the others' average slope, scaled by how far it carries, and its prior at the mean
    # logged prompt
    shared = RewardCritic(K, list(range(E)))
    shared_fit = fit_reward_critic(shared, _obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None],
                                   shared=True, ridge=1.0, prior=[None, None, 0.9])
    assert torch.allclose(shared.weight[:2], critic.weight[:2], atol=0.002)
    assert 0.0 <= shared_fit.transfer <= 1.0
    others = torch.as_tensor(true_w[:2].mean(0), dtype=torch.float32)
    assert torch.allclose(shared.weight[2], shared_fit.transfer * others, atol=0.01)
    mean_obs = _obs(x.mean(0, keepdims=True))
    assert shared(mean_obs)[0, 0, 2].item() == pytest.approx(0.9, abs=1e-5)
    with pytest.raises(ValueError, match="ridge"):
        fit_reward_critic(critic, _obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None], 0.0)


def test_shared_slope_carries_what_makes_a_prompt_hard_to_an_agent_with_few_records():
    """Prompt difficulty is shared (``r = d·x + b_k``) and the router sent the hard prompts to the
    strong agent: the fixed-effects slope recovers ``d`` where a pooled regression would not, and an
    agent with 12 records ranks the prompts almost as the truth does, with a quarter of the error of a
    critic shrunk towards a constant."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(4000, E))
    d = rng.normal(size=E) * 0.1
    offset = np.array([0.6, 0.3, 0.45])
    hard = x @ d < 0
    action = np.where(hard, 0, 1)  # confounded: who answered depends on the prompt
    action[:12] = 2  # a new agent with 12 records
    reward = x @ d + offset[action] + rng.normal(scale=0.1, size=4000)
    args = (_obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None])
    slope, transfer = shared_slope(torch.as_tensor(x), torch.as_tensor(action), torch.as_tensor(reward),
                                   torch.ones(4000, dtype=torch.float64), K, ridge=1.0)
    assert slope.numpy() == pytest.approx(d, abs=0.01)
    assert transfer > 0.95  # each agent's own slope is what the other's says
    pooled = np.linalg.lstsq(np.hstack([x, np.ones((4000, 1))]), reward, rcond=None)[0][:E]
    assert np.abs(pooled - d).max() > 0.05  # ignoring who answered mistakes the router's choice for difficulty
    probe = rng.normal(size=(500, E))
    truth = probe @ d + offset[2]
    error = {}
    for shared in (True, False):
        critic = RewardCritic(K, list(range(E)))
        fit_reward_critic(critic, *args, ridge=10.0, shared=shared)
        predicted = critic(_obs(probe))[:, 0, 2].numpy()
        error[shared] = np.abs(predicted - truth).mean()
        if shared:
            assert np.corrcoef(predicted, truth)[0, 1] > 0.99
    assert error[True] < 0.04 and error[False] > 3 * error[True]  # 0.026 against 0.119 here


def test_the_slope_of_specialists_with_opposite_strengths_does_not_carry_to_a_newcomer():
    """A calculator good where a writer is bad (``r = ±d·x + b_k``): their shared slope says nothing
    about a third agent, the leave-one-out transfer is 0, and the critic is the constant prior's."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(3000, E))
    d = rng.normal(size=E) * 0.1
    action = rng.integers(0, 2, size=3000)
    action[:12] = 2
    sign = np.where(action == 0, 1.0, -1.0)
    reward = sign * (x @ d) + np.array([0.5, 0.5, 0.4])[action] + rng.normal(scale=0.1, size=3000)
    _, transfer = shared_slope(torch.as_tensor(x), torch.as_tensor(action), torch.as_tensor(reward),
                               torch.ones(3000, dtype=torch.float64), K, ridge=1.0)
    assert transfer == 0.0
    args = (_obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None])
    critics = [RewardCritic(K, list(range(E))) for _ in range(2)]
    fits = [fit_reward_critic(critic, *args, ridge=10.0, shared=shared)
            for critic, shared in zip(critics, (True, False), strict=True)]
    assert fits[0].transfer == 0.0
    assert torch.equal(critics[0].weight, critics[1].weight) and torch.equal(critics[0].bias, critics[1].bias)


def test_actor_target_moves_towards_the_advantage_within_the_trust_region():
    old = torch.tensor([[0.6, 0.3, 0.1]])
    reward = torch.tensor([[0.2, 0.5, 0.4]])
    wide = actor_targets(old, reward, kl_temperature=100.0, entropy_temperature=0.0)
    assert torch.allclose(wide, old, atol=0.01)  # a large η barely moves
    step = actor_targets(old, reward, kl_temperature=0.05, entropy_temperature=0.0)
    assert step.sum().item() == pytest.approx(1.0) and step.argmax().item() == 1
    # the closed form: π_old · exp(A / η), normalised (the baseline cancels)
    expected = old * torch.exp(reward / 0.05)
    assert torch.allclose(step, expected / expected.sum(), atol=1e-6)
    # with the entropy term: π_old^(η/(η+τ)) · exp(A / (η+τ))
    mixed = actor_targets(old, reward, kl_temperature=0.02, entropy_temperature=0.01)
    expected = old ** (2 / 3) * torch.exp(reward / 0.03)
    assert torch.allclose(mixed, expected / expected.sum(), atol=1e-6)
    # old evidence fades: repeated rounds tend to softmax(Q / τ) from any start, even a saturated one
    pi = torch.tensor([[1.0 - 2e-30, 1e-30, 1e-30]])
    for _ in range(40):
        pi = actor_targets(pi, reward, kl_temperature=0.02, entropy_temperature=0.01)
    assert torch.allclose(pi, torch.softmax(reward / 0.01, dim=-1), atol=1e-4)


def test_reward_critic_width_is_the_ridge_posterior_sd_and_shrinks_where_it_has_data():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, E))
    action = np.where(rng.random(400) < 0.9, 0, 1)  # agent 0 chosen 9 times in 10, agent 2 never
    reward = 0.5 + 0.1 * x[:, 0] + rng.normal(scale=0.1, size=400)
    critic = RewardCritic(K, list(range(E)))
    assert critic.width(_obs(x[:1])).abs().max() == 0  # a fresh critic knows no width
    fit = fit_reward_critic(critic, _obs(x), torch.as_tensor(action)[:, None], torch.as_tensor(reward)[:, None],
                            ridge=2.0)
    # the reference: σ̂² (X̃ᵀX̃ + λI)⁻¹ with X̃ = [x, 1], σ̂² the pooled mean squared residual
    probe = rng.normal(size=(5, E))
    xt = np.hstack([x[action == 1], np.ones(((action == 1).sum(), 1))])
    cov = fit.mse * np.linalg.inv(xt.T @ xt + 2.0 * np.eye(E + 1))
    pt = np.hstack([probe, np.ones((5, 1))])
    expected = np.sqrt(np.einsum("mf,fg,mg->m", pt, cov, pt))
    width = critic.width(_obs(probe))[:, 0].numpy()  # [5, K]
    assert width[:, 1] == pytest.approx(expected, rel=1e-4)
    assert critic.width(_obs(probe), [1])[:, 0, 0].numpy() == pytest.approx(expected, rel=1e-4)  # one agent's only
    assert (width[:, 0] < width[:, 1]).all() and (width[:, 1] < width[:, 2]).all()  # more data, narrower
    assert width[:, 2] == pytest.approx(np.sqrt(fit.mse * (np.square(probe).sum(1) + 1) / 2.0), rel=1e-4)


def test_optimistic_gaps_explore_an_agent_the_critic_is_unsure_of():
    reward = np.array([0.5, 0.3, 0.3])
    mask = np.ones(3, dtype=bool)
    width = np.array([0.0, 0.0, 0.4])
    plain = inverse_gap_weighting(reward, mask, 0, 100.0)
    assert plain[1] == pytest.approx(plain[2])
    p = inverse_gap_weighting(reward, mask, 0, 100.0, width, optimism=0.5)  # agent 2's bound 0.5: gap 0
    assert p[1] == pytest.approx(1 / (3 + 100 * 0.2)) and p[2] == pytest.approx(1 / 3)
    assert p.sum() == pytest.approx(1.0)
    assert inverse_gap_weighting(reward, mask, 0, 100.0, width, optimism=0.0) == pytest.approx(plain)
    # a young agent (added at run time, few records) is tried as if level with the leader
    young = inverse_gap_weighting(reward, mask, 0, 100.0, young=np.array([False, True, False]))
    assert young[1] == pytest.approx(1 / 3) and young[2] == pytest.approx(plain[2])


def test_a_checkpoint_saved_before_the_critic_kept_its_covariance_still_loads(tmp_path):
    directory = _policy(tmp_path).path
    tensors = load_file(str(directory / WEIGHTS))
    del tensors["reward.covariance"]
    save_file(tensors, str(directory / WEIGHTS))
    meta = json.loads((directory / META).read_text())
    meta["weights_sha256"] = hashlib.sha256((directory / WEIGHTS).read_bytes()).hexdigest()
    (directory / META).write_text(json.dumps(meta))
    policy = load_checkpoint(directory)
    assert policy.reward_critic is not None and policy.reward_critic.covariance.abs().max() == 0


def test_inverse_gap_weighting_follows_squarecb():
    reward = np.array([0.5, 0.4, 0.1, 0.45])
    mask = np.array([True, True, True, False])
    p = inverse_gap_weighting(reward, mask, leader=0, gamma=100.0)
    assert p.sum() == pytest.approx(1.0) and p[3] == 0.0
    assert p[1] == pytest.approx(1 / (3 + 100 * 0.1)) and p[2] == pytest.approx(1 / (3 + 100 * 0.4))
    assert p[0] == pytest.approx(1 - p[1] - p[2])
    assert inverse_gap_weighting(reward, mask, 0, 0.0) == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])
    # the leader is the actor's; an agent the critic rates above it has gap 0 (explored most)
    assert inverse_gap_weighting(reward, mask, 1, 1e6)[0] == pytest.approx(1 / 3)
    assert igw_gamma(0, 9, 10.0) == 0.0 and igw_gamma(100, 4, 10.0) == pytest.approx(200.0)
    with pytest.raises(ValueError, match="masked"):
        inverse_gap_weighting(reward, mask, 3, 1.0)


def _policy(tmp_path, name: str = "agents.json"):
    agents = [{"name": f"agent-{k}"} for k in range(K)]
    (tmp_path / name).write_text(json.dumps(agents))
    return load_checkpoint(init_policy(tmp_path / name, tmp_path / "checkpoints", embed_dim=E))


def _logged(policy, rng: np.random.Generator, n: int, best_of) -> list[tuple[str, str]]:
    """``n`` records of ``policy`` exploring on random prompts, rewarded 1 for ``best_of(x)``."""
    service = RoutingService(policy, embedder=None, seed=int(rng.integers(1 << 30)))  # type: ignore[arg-type]
    out = []
    for i in range(n):
        x = rng.normal(size=E).astype(np.float32)
        decision = service.route("prompt", explore=True, embedding=x / np.linalg.norm(x))
        quality = float(decision.action == best_of(x))
        record = ExperienceRecord.join(service.decision_context(decision, "prompt", None),
                                       Feedback(quality=quality, feedback_at="2026-12-06T00:00:00+00:00"))
        out.append((str(i + 1), json.dumps(record.to_json_dict())))
    return out


def test_a_round_on_cold_start_feedback_learns_the_best_agent_per_prompt(tmp_path):
    policy = _policy(tmp_path)
    assert policy.meta.exploration.gamma == 0.0
    rng = np.random.default_rng(0)
    best_of = lambda x: 0 if x[0] > 0 else 2  # noqa: E731 - the world
    entries = _logged(policy, rng, 600, best_of)
    out = bandit_round(RetrainConfig(checkpoint_root=tmp_path), policy, [], entries)
    assert out.gate["passed"] and out.candidate.meta.exploration.gamma > 0
    assert out.used + out.gate["logged"]["decisions"] == 600
    test = rng.normal(size=(400, E)).astype(np.float32)
    test /= np.linalg.norm(test, axis=1, keepdims=True)
    probs = out.candidate.probabilities(out.candidate.build_obs(torch.from_numpy(test), None))[:, 0]
    right = (probs.argmax(-1).numpy() == np.array([best_of(x) for x in test])).mean()
    assert right > 0.8, right  # a linear critic on a step: the prompts near it stay unsure
    # the served exploration now spends little on the agent that is never best
    service = RoutingService(out.candidate, embedder=None, seed=0)  # type: ignore[arg-type]
    obs = out.candidate.build_obs(torch.from_numpy(test), None)
    spent = np.mean([service.sampling_distribution(obs[i:i + 1], probs[i].numpy(), np.ones(K, bool), 0.0, 1.0)[1]
                     for i in range(100)])
    assert spent < 0.15, spent


def test_logged_gate_fails_only_a_clearly_worse_candidate():
    def verdict(diff: float) -> dict:
        base = {"snips": 0.5, "dr": 0.5, "ess": 50.0, "matched": 0.5}
        return {"decisions": 100, "candidate": base, "serving": base, "confidence": 0.95, "min_ess": 30,
                "difference": {"dr": diff, "ci": [diff - 0.01, diff + 0.01]},
                "verdict": "worse" if diff + 0.01 < 0 else "better" if diff - 0.01 > 0 else "inconclusive"}
    assert not logged_gate(verdict(-0.05))["passed"]
    assert logged_gate(verdict(0.0))["passed"] and logged_gate(verdict(0.05))["passed"]
    assert logged_gate(None)["passed"] and logged_gate(None)["static"] is None


def test_doubly_robust_interval_covers_the_true_difference(tmp_path):
    """Simulated logs where the true value is known: the 95% interval of candidate - serving covers
    the truth in at least 90% of 200 trials, with misspecified reward models."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    serving, candidate = _policy(tmp_path / "a"), _policy(tmp_path / "b")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # two different greedy policies, and reward models that are wrong
        for p in (serving, candidate):
            for param in p.actor.parameters():
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
            p.reward_critic.weight.copy_(torch.randn(p.reward_critic.weight.shape, generator=gen) * 0.3)
            p.reward_critic.bias.fill_(0.4)
    true_w = torch.randn(K, E, generator=gen)

    def mean_reward(obs: torch.Tensor) -> torch.Tensor:  # [M, K] Bernoulli means
        return torch.sigmoid(obs[:, 0, :E] @ true_w.T)

    def greedy(policy, obs):
        return policy.probabilities(obs).argmax(-1).reshape(-1)

    big = _obs(np.random.default_rng(99).normal(size=(200_000, E)))
    mu_big = mean_reward(big)
    truth = float((mu_big.gather(1, greedy(candidate, big)[:, None]) - mu_big.gather(1, greedy(serving, big)[:, None]))
                  .mean())
    rng = np.random.default_rng(1)
    covered, trials, m = 0, 200, 400
    for _ in range(trials):
        obs = _obs(rng.normal(size=(m, E)))
        logging = torch.as_tensor(rng.dirichlet(np.ones(K) * 2, size=m), dtype=torch.float32)  # [M, K]
        action = torch.multinomial(logging, 1, generator=gen)  # [M, 1]
        mu = mean_reward(obs).gather(1, action)
        reward = torch.bernoulli(mu, generator=gen)
        batch = LoggedBatch(obs=obs, action_mask=torch.ones(m, 1, K, dtype=torch.bool), action=action,
                            behaviour_log_prob=torch.log(logging.gather(1, action)),
                            propensity=logging.gather(1, action), reward=reward,
                            done=torch.ones(m, 1, dtype=torch.bool), entry_ids=[str(i) for i in range(m)], sessions=m)
        terms = off_policy_terms(candidate, None, batch), off_policy_terms(serving, None, batch)
        out = logged_verdict(*terms, 1.0, 0.95)
        lo, hi = out["difference"]["ci"]
        covered += lo <= truth <= hi
    assert not math.isclose(truth, 0.0, abs_tol=1e-3)
    assert covered / trials >= 0.90, (covered, truth)
