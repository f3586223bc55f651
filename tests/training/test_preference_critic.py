"""A cold start that serves every request's own cost preference: the reward critic learns each
agent's quality and cost apart (policy.networks.PreferenceRewardCritic) and a round of the learner on
feedback logged at many preferences serves each one."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import torch

from cli.app import main
from contract.experience import ExperienceRecord, Feedback
from env.dataset import AgentSpec
from policy.agent_set import add_agent
from policy.checkpoint import load_checkpoint, save_checkpoint
from policy.networks import PreferenceRewardCritic, RewardCritic
from router.service import RoutingService
from training.cold_start import init_policy
from training.retrain.bandit_round import bandit_round
from training.retrain.config import RetrainConfig
from training.retrain.learner import fit_reward_critic

E = 6
#: a cheap agent of middling quality and a dear one that is better on most prompts (USD per 1M tokens)
AGENTS = [{"name": "cheap", "price_per_1m_tokens": 0.1}, {"name": "dear", "price_per_1m_tokens": 30.0}]
CW_MAX = 10_000.0


def _policy(tmp_path, agents=AGENTS):
    (tmp_path / "agents.json").write_text(json.dumps(agents))
    return load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E,
                                       cost_weight=1.0, cost_weight_max=CW_MAX))


def _prompts(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.normal(size=(n, E)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _outcome(x: np.ndarray, action: int, expected_usd: float) -> tuple[float, float]:
    """The world: ``dear``'s quality grows with ``x0`` (better than ``cheap``'s 0.5 where ``x0 > -1/3``);
    its realised cost is 1.5x its price estimate, ``cheap``'s exactly its estimate."""
    if action == 0:
        return 0.5, expected_usd
    return 0.6 + 0.3 * float(x[0]), 1.5 * expected_usd


def test_a_cold_start_with_cost_weight_max_has_a_preference_critic_that_round_trips(tmp_path):
    policy = _policy(tmp_path)
    assert policy.layout.cost_preference and policy.layout.cost_weight_max == CW_MAX
    critic = policy.reward_critic
    assert isinstance(critic, PreferenceRewardCritic)
    with torch.no_grad():
        critic.cost_coef.fill_(0.25)
        critic.cost_bias.fill_(-0.5)
    path = save_checkpoint(tmp_path / "again", policy.actor, policy.critic, policy.meta.content(), critic)
    loaded = load_checkpoint(path).reward_critic
    assert isinstance(loaded, PreferenceRewardCritic)
    assert torch.equal(loaded.cost_coef, critic.cost_coef) and torch.equal(loaded.cost_bias, critic.cost_bias)


def test_the_critic_reads_the_preference_and_prices_back_from_the_observation(tmp_path):
    policy = _policy(tmp_path)
    critic = policy.reward_critic
    x = torch.from_numpy(_prompts(np.random.default_rng(0), 4))
    tokens = torch.tensor([10, 100, 1000, 50])
    for cw in (0.0, 3.0, 500.0, CW_MAX):
        obs = policy.build_obs(x, None, cost_weight=torch.full((4,), cw), tokens=tokens)
        assert critic.preference(obs)[:, 0, 0].tolist() == pytest.approx([cw] * 4, rel=1e-5, abs=1e-6)
        expected = torch.as_tensor(policy.layout.expected_costs(tokens.numpy()), dtype=torch.float32)
        assert torch.allclose(critic.expected_cost(obs)[:, 0], expected, rtol=1e-5)
        # before any feedback: each agent's prior quality minus the price rule's cost at this preference
        assert torch.allclose(critic(obs)[:, 0], critic.quality(obs)[:, 0] - cw * expected, rtol=1e-5, atol=1e-6)


def test_fitted_apart_the_critic_serves_every_preference_and_one_reward_model_cannot(tmp_path):
    """Records logged at log-uniform preferences: the preference critic recovers quality and the
    1.5x cost and ranks the agents right at every weight; a single reward model of the prompt
    (RewardCritic) fitted on the same rewards ranks them by the average weight."""
    policy = _policy(tmp_path)
    rng = np.random.default_rng(1)
    m = 4000
    x = _prompts(rng, m)
    tokens = rng.integers(20, 400, size=m)
    cw = np.exp(rng.uniform(0.0, np.log(CW_MAX), size=m))
    action = rng.integers(0, 2, size=m)
    expected = policy.layout.expected_costs(tokens)
    outcome = np.array([_outcome(x[i], action[i], expected[i, action[i]]) for i in range(m)])
    reward = outcome[:, 0] - cw * outcome[:, 1]
    obs = policy.build_obs(torch.from_numpy(x), None, cost_weight=torch.as_tensor(cw, dtype=torch.float32),
                           tokens=torch.as_tensor(tokens))
    col = lambda v: torch.as_tensor(v, dtype=torch.float32)[:, None]  # noqa: E731
    critic = policy.reward_critic
    with pytest.raises(ValueError, match="outcome"):
        fit_reward_critic(critic, obs, col(action).long(), col(reward), ridge=1.0)
    fit_reward_critic(critic, obs, col(action).long(), col(reward), ridge=1.0,
                      outcome=(col(outcome[:, 0]), col(outcome[:, 1])))
    plain = RewardCritic(2, critic.columns.tolist())
    fit_reward_critic(plain, obs, col(action).long(), col(reward), ridge=1.0)

    test = _prompts(np.random.default_rng(2), 500)
    test_tokens = np.full(500, 200)
    test_expected = policy.layout.expected_costs(test_tokens)
    accuracy = {}
    for weight in (0.5, 8.0, 3000.0):  # dear is best on most prompts, on some, on none
        true = np.array([[_outcome(xi, a, test_expected[i, a])[0] - weight * _outcome(xi, a, test_expected[i, a])[1]
                          for a in (0, 1)] for i, xi in enumerate(test)])
        obs_t = policy.build_obs(torch.from_numpy(test), None, cost_weight=torch.full((500,), weight),
                                 tokens=torch.as_tensor(test_tokens))
        right = (critic(obs_t)[:, 0].argmax(-1).numpy() == true.argmax(-1)).mean()
        assert right > 0.95, (weight, right)
        accuracy[weight] = (plain(obs_t)[:, 0].argmax(-1).numpy() == true.argmax(-1)).mean()
    # the single reward model learned the average preference (mostly thrifty): wrong for a quality seeker
    assert accuracy[0.5] < 0.5, accuracy
    # the cost correction found the dear agent's 1.5x: its estimated cost is within 5% of the truth
    obs_t = policy.build_obs(torch.from_numpy(test), None, cost_weight=torch.full((500,), 1.0),
                             tokens=torch.as_tensor(test_tokens))
    ratio = (critic.cost(obs_t)[:, 0, 1] / critic.expected_cost(obs_t)[:, 0, 1]).mean().item()
    assert ratio == pytest.approx(1.5, rel=0.05)


def test_a_round_on_feedback_at_many_preferences_serves_each_request_its_own(tmp_path):
    """The production loop: decisions served at each request's cost_weight with exploration, their
    feedback (quality and cost apart), one round; the candidate sends a quality-seeking request on
    a prompt the dear agent is good at to it, and a thrifty one to the cheap agent."""
    policy = _policy(tmp_path)
    service = RoutingService(policy, embedder=None, seed=0)  # type: ignore[arg-type]
    rng = np.random.default_rng(3)
    entries = []
    for i, x in enumerate(_prompts(rng, 1500)):
        cw = float(np.exp(rng.uniform(0.0, np.log(CW_MAX))))
        prompt = "word " * int(rng.integers(20, 200))
        decision = service.route(prompt, explore=True, embedding=x, cost_weight=cw)
        expected = float(policy.layout.expected_costs([decision.prompt_tokens])[0, decision.action])
        quality, cost = _outcome(x, decision.action, expected)
        feedback = Feedback(quality=quality, cost_usd=cost, feedback_at="2026-12-06T00:00:00+00:00")
        record = ExperienceRecord.join(service.decision_context(decision, prompt, None), feedback)
        entries.append((str(i + 1), json.dumps(record.to_json_dict())))
    out = bandit_round(RetrainConfig(checkpoint_root=tmp_path), policy, [], entries)
    assert out.gate["passed"]
    served = RoutingService(out.candidate, embedder=None, seed=0)  # type: ignore[arg-type]
    good = np.zeros(E, dtype=np.float32)
    good[0] = 1.0
    prompt = "word " * 150  # 150 words: the dear agent costs about 0.6 cents more
    assert served.route(prompt, embedding=good, cost_weight=1.0).agent == "dear"
    assert served.route(prompt, embedding=good, cost_weight=5000.0).agent == "cheap"
    bad = -good
    assert served.route(prompt, embedding=bad, cost_weight=1.0).agent == "cheap"


def test_an_added_agent_keeps_what_the_critic_learned_of_the_others_and_starts_at_its_price(tmp_path):
    policy = _policy(tmp_path)
    with torch.no_grad():
        policy.reward_critic.cost_coef.normal_()
        policy.reward_critic.cost_bias.fill_(0.3)
    _, _, grown, _ = add_agent(policy, AgentSpec(name="new", price_per_1m_tokens=2.0))
    assert isinstance(grown, PreferenceRewardCritic)
    assert torch.equal(grown.cost_coef[:2], policy.reward_critic.cost_coef)
    assert grown.cost_bias.tolist() == pytest.approx([0.3, 0.3, 0.0])
    assert grown.cost_coef[2].abs().max() == 0  # the new agent's cost: its price, until feedback says otherwise


def _cli_error(monkeypatch, capsys, *args: str) -> str:
    """What ``agent-router`` prints for a user's mistake: one ``error:`` line on stderr, exit code 2."""
    monkeypatch.setattr(sys, "argv", ["agent-router", *args])
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    return err


def test_init_with_cost_weight_max_needs_prices_and_a_default_within_it(tmp_path, monkeypatch, capsys):
    (tmp_path / "unpriced.json").write_text(json.dumps([{"name": "a"}, {"name": "b", "price_per_1m_tokens": 1.0}]))
    err = _cli_error(monkeypatch, capsys, "init", "--agents", str(tmp_path / "unpriced.json"), "--out",
                     str(tmp_path / "c"), "--cost-weight-max", "100")
    assert "needs a price for every agent; none for a" in err
    (tmp_path / "priced.json").write_text(json.dumps(AGENTS))
    err = _cli_error(monkeypatch, capsys, "init", "--agents", str(tmp_path / "priced.json"), "--out",
                     str(tmp_path / "c"), "--cost-weight", "500", "--cost-weight-max", "100")
    assert "above --cost-weight-max" in err
    assert not (tmp_path / "c").exists()  # nothing written
