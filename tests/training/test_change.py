"""A changing world in the learner: the forgetting horizon's weights, the change test, a round
that forgets a broken agent's history and keeps forgetting it in the rounds after, and the alarm
that runs a round early when a few pending records already show a break."""

from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest
import torch

from contract.experience import ExperienceRecord, Feedback
from experience.sqlite_store import SqliteExperienceStore
from policy.checkpoint import load_checkpoint
from policy.networks import RewardCritic
from router.service import RoutingService
from tests.harness import sample_feedback
from training.cold_start import init_policy
from training.retrain.bandit_round import (
    LEADER_MIN_RECORDS,
    bandit_round,
    critic_priors,
    round_alarms,
    uses_shared_slope,
)
from training.retrain.change import change_start, detect_changes
from training.retrain.config import RetrainConfig
from training.retrain.job import run_retrain
from training.retrain.learner import recency_weights

E, K = 6, 3


def test_recency_weights_halve_every_half_life_in_records_and_in_seconds():
    t = torch.tensor([10.0, 40.0, 20.0, 30.0], dtype=torch.float64)  # newest: 40 s
    assert recency_weights(t) is None
    by_count = recency_weights(t, half_life_records=2)
    assert by_count.tolist() == pytest.approx([0.5 ** 1.5, 1.0, 0.5, 0.5 ** 0.5])
    by_time = recency_weights(t, half_life_s=10.0)
    assert by_time.tolist() == pytest.approx([0.125, 1.0, 0.25, 0.5])
    both = recency_weights(t, half_life_records=2, half_life_s=10.0)
    assert both.tolist() == pytest.approx((by_count * by_time).tolist())
    with pytest.raises(ValueError, match="half_life_s"):
        recency_weights(t, half_life_s=0.0)


def _obs(x: np.ndarray) -> torch.Tensor:
    return torch.cat([torch.as_tensor(x, dtype=torch.float32), torch.zeros(len(x), K)], dim=1).unsqueeze(1)


def _tests(reward_of, seed: int = 0):
    """Change tests on 600 earlier and 200 new records, agents chosen uniformly; ``reward_of(x, a,
    fresh)`` the world."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(800, E)) / np.sqrt(E)
    a = rng.integers(0, K, size=800)
    fresh = np.arange(800) >= 600
    r = np.array([reward_of(x[i], a[i], fresh[i], rng) for i in range(800)])
    return detect_changes(RewardCritic(K, list(range(E))), _obs(x), torch.as_tensor(a)[:, None],
                          torch.as_tensor(r, dtype=torch.float32)[:, None], torch.as_tensor(fresh), None,
                          ridge=10.0, prior=[None] * K, z_threshold=4.0, min_shift=0.05, min_records=20)


def test_the_change_test_fires_on_a_shift_and_not_on_noise_or_the_priors_pull():
    def stationary(x, a, fresh, rng):
        return 0.3 + 0.2 * a + 0.1 * x[0] + rng.normal(scale=0.2)

    assert not any(t.changed for t in _tests(stationary))

    def broken(x, a, fresh, rng):
        return 0.0 if a == 2 and fresh else stationary(x, a, fresh, rng)

    tests = {t.agent: t for t in _tests(broken)}
    assert tests[2].changed and tests[2].shift < -0.5 and not tests[0].changed and not tests[1].changed

    def always_zero(x, a, fresh, rng):  # the ridge pulls agent 2's estimate towards the prior: not a change
        return 0.0 if a == 2 else stationary(x, a, fresh, rng)

    assert not any(t.changed for t in _tests(always_zero))


@pytest.mark.parametrize("seed", range(5))
def test_an_agent_the_policy_now_sends_only_where_it_is_strong_has_not_changed(seed):
    """Exploration once sent agent 0 everywhere; the policy now sends it only where it is strong.
    The ridge-shrunk linear critic underrates it there, so its new residuals are above its old ones
    on average (+0.06 to +0.21 in these worlds, z 2 to 8.5: the test compared all the old records
    then); matched on the prompt they are not. Halved there, it has changed."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(1600, E)) / np.sqrt(E)
    a = rng.integers(0, K, size=1600)
    a[600:] = np.where(x[600:, 0] > 0.2, 0, rng.integers(1, K, size=1000))
    x, a = x[:800], a[:800]  # 600 earlier records, 200 new
    fresh = np.arange(800) >= 600

    def tests(factor: float):
        q = np.where(a == 0, np.where(x[:, 0] > 0, 0.9, 0.1) * np.where(fresh, factor, 1.0), 0.4 + 0.1 * a)
        r = q + rng.normal(scale=0.1, size=800)
        return {t.agent: t for t in detect_changes(
            RewardCritic(K, list(range(E))), _obs(x), torch.as_tensor(a)[:, None],
            torch.as_tensor(r, dtype=torch.float32)[:, None], torch.as_tensor(fresh), None, ridge=10.0,
            prior=[None] * K, z_threshold=4.0, min_shift=0.05, min_records=20)}

    stationary = tests(1.0)
    assert not any(t.changed for t in stationary.values()) and abs(stationary[0].shift) < 0.1
    degraded = tests(0.5)
    assert degraded[0].changed and degraded[0].shift < -0.3


def _records(policy, rng, n: int, quality_of, start: int, shift: float = 0.0) -> list[tuple[str, str]]:
    """``n`` logged decisions of ``policy`` on unit-norm prompts (their mean ``shift`` along the first
    axis before the norm: real embeddings' mean is not 0), with ``quality_of(action)`` feedback."""
    service = RoutingService(policy, embedder=None, seed=int(rng.integers(1 << 30)))  # type: ignore[arg-type]
    out = []
    for i in range(n):
        x = (rng.normal(size=E) + shift * np.eye(E)[0]).astype(np.float32)
        decision = service.route("prompt", explore=True, embedding=x / np.linalg.norm(x))
        record = ExperienceRecord.join(service.decision_context(decision, "prompt", None),
                                       Feedback(quality=quality_of(decision.action),
                                                feedback_at="2026-12-06T00:00:00+00:00"))
        out.append((f"{start + i:08d}", json.dumps(record.to_json_dict())))
    return out


def test_a_round_forgets_a_broken_agents_history_and_the_next_rounds_keep_it_forgotten(tmp_path):
    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    cfg = RetrainConfig(checkpoint_root=tmp_path, holdout_fraction=0.0)
    rng = np.random.default_rng(0)
    good = {0: 0.9, 1: 0.5, 2: 0.4}
    before = _records(policy, rng, 600, lambda a: good[a], 0)
    first = bandit_round(cfg, policy, [], before)
    assert first.train["changes_detected"] == 0 and first.candidate.meta.history_since == {}
    serving = first.candidate
    assert serving.reward_critic.bias.argmax() == 0
    after = _records(serving, rng, 300, lambda a: 0.0 if a == 0 else good[a], 600)  # agent-0 breaks
    second = bandit_round(cfg, serving, before, after)
    assert second.train["changes_detected"] == 1 and list(second.candidate.meta.history_since) == ["agent-0"]
    x = torch.from_numpy(rng.normal(size=(200, E)).astype(np.float32))
    estimate = second.candidate.estimated_rewards(second.candidate.build_obs(x, None))[:, 0]  # [200, K]
    assert (estimate[:, 0] < estimate[:, 1]).all()  # the broken agent is rated below a working one
    share = [p.candidate.probabilities(p.candidate.build_obs(x, None))[:, 0, 0].mean() for p in (first, second)]
    assert share[1] < share[0] - 0.15  # the actor leaves it inside its trust region, a step a round
    # the next round, with the broken agent's old records still replayed, does not learn them back
    third = bandit_round(cfg, second.candidate, before + after, _records(second.candidate, rng, 200,
                                                                         lambda a: 0.0 if a == 0 else good[a], 900))
    assert third.candidate.meta.history_since == second.candidate.meta.history_since
    assert (third.candidate.estimated_rewards(third.candidate.build_obs(x, None))[:, 0, 0] < 0.3).all()
    assert third.candidate.probabilities(third.candidate.build_obs(x, None))[:, 0, 0].mean() < 0.05


def test_an_added_agent_is_young_until_the_critic_has_enough_of_its_records(tmp_path):
    from env.dataset import AgentSpec
    from policy.agent_set import add_agent
    from policy.checkpoint import save_checkpoint

    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    cfg = RetrainConfig(checkpoint_root=tmp_path, holdout_fraction=0.0, young_records=30)
    rng = np.random.default_rng(0)
    first = bandit_round(cfg, policy, [], _records(policy, rng, 300, lambda a: 0.5, 0))
    assert first.candidate.meta.exploration.young == []
    actor, critic, reward_critic, content = add_agent(first.candidate, AgentSpec(name="newcomer"))
    assert content["exploration"]["young"] == content["exploration"]["added"] == ["newcomer"]
    assert content["agent_specs"][-1]["prior_quality"] is None  # the operator gave none: the rounds' own prior
    grown = load_checkpoint(save_checkpoint(tmp_path / "grown", actor, critic, content | {"version": "g"},
                                            reward_critic))
    service = RoutingService(grown, embedder=None, seed=0)  # type: ignore[arg-type]
    x = torch.nn.functional.normalize(torch.randn(50, E), dim=-1)
    p_new = [service.sampling_distribution(grown.build_obs(x[i:i + 1], None), grown.probabilities(
        grown.build_obs(x[i:i + 1], None))[0, 0].numpy(), np.ones(K + 1, bool), 0.0, 1.0)[K] for i in range(50)]
    assert min(p_new) == pytest.approx(1 / (K + 1))  # level with the leader on every prompt
    # and never the leader while another agent is allowed, even where the actor prefers it: its records
    # stay a fair sample of the prompts instead of the ones where the others' estimates are lowest
    estimates, favours_newcomer = np.array([0.5, 0.6, 0.4, 0.9]), np.array([0.1, 0.1, 0.1, 0.7])
    mu = service.distribution_from_estimates(estimates, None, favours_newcomer, np.ones(K + 1, bool), 0.0, 1.0)
    assert mu[K] == pytest.approx(1 / (K + 1)) and int(np.argmax(mu)) == 0
    alone = np.array([False] * K + [True])
    assert service.distribution_from_estimates(estimates, None, favours_newcomer, alone, 0.0, 1.0)[K] == 1.0
    fresh = _records(grown, rng, 200, lambda a: 0.5, 300)
    n_new = sum(json.loads(r)["agent"] == "newcomer" for _, r in fresh)
    second = bandit_round(cfg, grown, [], fresh)
    assert n_new >= 30 and second.candidate.meta.exploration.young == []  # known now: the index rule takes over
    # with auto, once an agent was added, every agent's critic is shrunk towards the shared slope, round after round
    assert second.candidate.meta.exploration.added == ["newcomer"]
    auto = cfg.model_copy(update={"shared_slope": "auto"})
    assert not uses_shared_slope(auto, policy) and uses_shared_slope(auto, grown)
    assert uses_shared_slope(auto, second.candidate)
    assert cfg.shared_slope == "auto"  # the default
    assert not uses_shared_slope(cfg.model_copy(update={"shared_slope": "never"}), grown)
    assert uses_shared_slope(cfg.model_copy(update={"shared_slope": "always"}), policy)


def test_a_young_agent_the_critic_is_sure_trails_everywhere_ends_its_young_phase_early(tmp_path):
    from env.dataset import AgentSpec
    from policy.agent_set import add_agent
    from policy.checkpoint import save_checkpoint

    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    cfg = RetrainConfig(checkpoint_root=tmp_path, holdout_fraction=0.0, young_records=1000, young_min_records=50)
    rng = np.random.default_rng(3)

    def noisy(mean: float) -> float:
        return float(np.clip(mean + rng.normal(scale=0.1), 0.0, 1.0))

    history = _records(policy, rng, 300, lambda a: noisy(0.6), 0)
    first = bandit_round(cfg, policy, [], history)
    actor, critic, reward_critic, content = add_agent(first.candidate, AgentSpec(name="newcomer"))
    grown = load_checkpoint(save_checkpoint(tmp_path / "grown", actor, critic, content | {"version": "g"},
                                            reward_critic))
    young = {}
    for label, newcomer_mean in (("bad", 0.05), ("level", 0.6)):
        fresh = _records(grown, rng, 400, lambda a, m=newcomer_mean: noisy(m if a == K else 0.6), 300)
        assert sum(json.loads(r)["agent"] == "newcomer" for _, r in fresh) >= 50  # tried as if level with the leader
        young[label] = bandit_round(cfg, grown, history, fresh).candidate.meta.exploration.young
        if label == "bad":
            off = cfg.model_copy(update={"young_exit_z": None})
            assert bandit_round(off, grown, history, fresh).candidate.meta.exploration.young == ["newcomer"]
    # far behind on every prompt: known well enough, the index rule takes over; level: still tried as young
    assert young == {"bad": [], "level": ["newcomer"]}


def test_the_change_is_located_inside_a_round_that_straddles_it(tmp_path):
    """A round's new records often begin before the change. Those belong to the old world: kept
    as the agent's new history (forgetting from the round's first record), they pulled its estimate
    back up. The change point is estimated (CUSUM) and forgetting starts there."""
    rng = np.random.default_rng(0)
    before, after = rng.normal(0.0, 0.1, 60), rng.normal(-0.5, 0.1, 40)
    assert change_start(torch.tensor(np.concatenate([before, after])), 10) in range(58, 63)
    assert change_start(torch.tensor(after), 10) <= 2  # the whole round after it
    assert change_start(torch.tensor(after[:12]), 10) <= 2  # no fewer than min_after after it

    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    cfg = RetrainConfig(checkpoint_root=tmp_path, holdout_fraction=0.0)
    good = {0: 0.9, 1: 0.5, 2: 0.4}
    history = _records(policy, rng, 600, lambda a: good[a], 0)
    serving = bandit_round(cfg, policy, [], history).candidate
    still = _records(serving, rng, 150, lambda a: good[a], 600)
    broken = _records(serving, rng, 150, lambda a: 0.0 if a == 0 else good[a], 750)  # agent-0 breaks
    since = bandit_round(cfg, serving, history, still + broken).candidate.meta.history_since["agent-0"]
    times = [json.loads(raw)["created_at"] for _, raw in broken if json.loads(raw)["action"] == 0]
    assert json.loads(still[0][1])["created_at"] < times[0] <= since <= times[3]


def test_a_few_pending_records_of_a_broken_favourite_run_a_round_early(tmp_path):
    """The retrain job waits for a round's record count, except when an agent's pending records
    already do worse than the serving critic expects: then a round runs on them now, and its
    change test forgets the broken agent's history. Records of a world that did not change, or
    too few of them, wait."""
    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    rng = np.random.default_rng(0)
    good = {0: 0.9, 1: 0.5, 2: 0.4}
    cfg = RetrainConfig(checkpoint_root=tmp_path / "checkpoints", holdout_fraction=0.2)
    serving = bandit_round(cfg, policy, [], _records(policy, rng, 600, lambda a: good[a], 0)).candidate
    assert round_alarms(cfg, serving, _records(serving, rng, 60, lambda a: good[a], 600)) == []
    broken = _records(serving, rng, 60, lambda a: 0.0 if a == 0 else good[a], 700)
    assert round_alarms(cfg, serving, broken) == ["agent-0"]
    assert round_alarms(cfg, serving, broken[:15]) == []  # fewer than change_min_records of it
    assert round_alarms(cfg.model_copy(update={"change_z": None}), serving, broken) == []  # the test is off

    # the job, on records logged through the SQLite store by the policy it last saved
    root, db = tmp_path / "checkpoints", tmp_path / "experience.sqlite3"

    async def log(n: int, quality_of) -> None:
        store = SqliteExperienceStore(db)
        service = RoutingService(load_checkpoint(root), embedder=None,  # type: ignore[arg-type]
                                 seed=int(rng.integers(1 << 30)))
        try:
            for _ in range(n):
                x = rng.normal(size=E).astype(np.float32)
                decision = service.route("prompt", explore=True, embedding=x / np.linalg.norm(x))
                await store.put_decision(service.decision_context(decision, "prompt", None))
                await store.record_feedback(decision.decision_id, sample_feedback(quality_of(decision.action)))
        finally:
            await store.close()

    job = RetrainConfig(checkpoint_root=root, sqlite_path=db, min_records=200)
    asyncio.run(log(600, lambda a: good[a]))
    assert run_retrain(job).status == "saved"
    asyncio.run(log(60, lambda a: good[a]))
    waited = run_retrain(job)
    assert waited.status == "too_few" and waited.alarms == [], waited
    asyncio.run(log(60, lambda a: 0.0 if a == 0 else good[a]))
    early = run_retrain(job)
    assert early.status == "saved" and early.records == 120 and early.alarms == ["agent-0"], early
    assert list(load_checkpoint(early.checkpoint).meta.history_since) == ["agent-0"]


@pytest.mark.parametrize("operator_prior", [None, 0.2])
def test_a_newcomer_without_a_prior_starts_as_good_as_the_leaders_logged_level(tmp_path, operator_prior):
    from env.dataset import AgentSpec
    from policy.agent_set import add_agent
    from policy.checkpoint import save_checkpoint
    from training.retrain.trajectories import build_batch

    (tmp_path / "agents.json").write_text(json.dumps([{"name": f"agent-{k}"} for k in range(K)]))
    policy = load_checkpoint(init_policy(tmp_path / "agents.json", tmp_path / "checkpoints", embed_dim=E))
    cfg = RetrainConfig(checkpoint_root=tmp_path, holdout_fraction=0.0)
    rng = np.random.default_rng(1)
    quality = {0: 0.3, 1: 0.8, 2: 0.5}
    logged = _records(policy, rng, 600, lambda a: quality[a], 0, shift=3.0)
    first = bandit_round(cfg, policy, [], logged)
    assert float(first.candidate.reward_critic.bias.max()) < 0.75  # with such prompts no intercept is a level
    actor, critic, reward_critic, content = add_agent(first.candidate, AgentSpec(name="newcomer",
                                                                                 prior_quality=operator_prior))
    grown = load_checkpoint(save_checkpoint(tmp_path / "grown", actor, critic, content | {"version": "g"},
                                            reward_critic))
    batch = build_batch(logged, grown, 0.0)
    counts = torch.bincount(batch.action.reshape(-1), minlength=K)
    assert (counts[:K] >= LEADER_MIN_RECORDS).all()
    priors = critic_priors(grown, batch, None)
    assert priors[:K] == [None] * K  # the agents the cold start knew: the mean logged reward, as before
    assert priors[K] == pytest.approx(0.8 if operator_prior is None else operator_prior)
    # the round after the change, with no records of the newcomer: its estimate is that prior on every prompt
    second = bandit_round(cfg, grown, logged, [])
    x = torch.nn.functional.normalize(torch.randn(50, E) + 3.0 * torch.eye(E)[0], dim=-1)
    estimate = second.candidate.estimated_rewards(second.candidate.build_obs(x, None))[:, 0]  # [50, K + 1]
    expected = 0.8 if operator_prior is None else operator_prior
    assert estimate[:, K].mean() == pytest.approx(expected, abs=0.05)
    # an agent's level needs LEADER_MIN_RECORDS of its records to count: none does in a short log
    assert critic_priors(grown, build_batch(logged[:LEADER_MIN_RECORDS], grown, 0.0), None)[K] == operator_prior
