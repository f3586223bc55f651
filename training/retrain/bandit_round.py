"""One round of the learner from logged bandit feedback (a policy with a reward critic).

The round's records are split by a hash of their session (:func:`~.trajectories.split_held_out`):
the held-out share is never trained on in this round and judges the candidate against the serving
policy; from the next round on it is replayed with the rest. Every record is thus judged once by a
policy that has not seen it and trained on ever after (progressive validation, as in the bake-off,
Bietti, Agarwal and Langford 2021, sec. 4). The candidate is refitted on the replayed history plus
the round's training share (:mod:`.learner`), and the gate publishes it unless the doubly robust
estimate on the held-out decisions says it is worse (:func:`logged_gate`).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import torch

from contract.policy_meta import ExplorationMeta
from policy.artefact import Policy
from policy.exploration import igw_gamma
from policy.networks import PreferenceRewardCritic
from training.retrain.change import detect_changes, pending_alarms
from training.retrain.config import RetrainConfig
from training.retrain.learner import actor_targets, fit_actor, fit_reward_critic, recency_weights
from training.retrain.offpolicy import logged_verdict, off_policy_terms
from training.retrain.trajectories import LoggedBatch, build_batch, merged_skipped, split_held_out

logger = logging.getLogger(__name__)


@dataclass
class BanditRound:
    """What :func:`bandit_round` made.

    Attributes:
        candidate: the new policy (not saved; ``meta.exploration`` set).
        cost_weight: reward per USD the rewards were computed with.
        used: records trained on (replayed history included); sessions: their sessions.
        skipped: reasons -> records left out.
        train: the critic's and the actor's fit figures.
        gate: :func:`logged_gate`'s decision.
    """

    candidate: Policy
    cost_weight: float
    used: int
    sessions: int
    skipped: dict[str, int] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    gate: dict[str, Any] = field(default_factory=dict)


def cost_weight_of(serving: Policy, cfg: RetrainConfig) -> float:
    """Reward per USD: ``cfg.cost_weight``, else the serving policy's training ``env.cost_weight``,
    else its layout's ``default_cost_weight``."""
    if cfg.cost_weight is not None:
        return cfg.cost_weight
    env = (serving.meta.training or {}).get("env") or {}
    return float(env.get("cost_weight", serving.layout.default_cost_weight))


def agent_priors(serving: Policy) -> list[float | None]:
    """``[K]`` each agent's ``prior_quality`` from the agents file the policy was made with (None: no prior)."""
    specs = {spec.get("name"): spec for spec in serving.meta.agent_specs}
    return [(specs.get(name) or {}).get("prior_quality") for name in serving.agents]


#: records an agent needs for its mean logged reward to count as a leader's level (:func:`critic_priors`)
LEADER_MIN_RECORDS = 50


def critic_priors(serving: Policy, batch: LoggedBatch, weight: torch.Tensor | None) -> list[float | None]:
    """``[K]`` the prior each agent's reward critic is shrunk towards this round: the operator's
    ``prior_quality`` (:func:`agent_priors`), and for an agent added at run time without one, the
    best mean logged target (reward; quality for a preference critic) of the other agents in
    service with at least :data:`LEADER_MIN_RECORDS` records (weighted by ``weight`` ``[M]``, None:
    1 each): optimistic initialisation (Sutton and Barto 2018, sec. 2.6), as good as the leader
    until its own records say otherwise. None: the mean logged target
    (:func:`~training.retrain.learner.fit_reward_critic`), also for a newcomer before any agent has
    that many records.

    The level is read from the logged records rather than from the critic's intercepts: with
    embeddings whose mean is not 0, an intercept is not an agent's reward at any logged prompt."""
    priors = agent_priors(serving)
    added = serving.meta.exploration.added if serving.meta.exploration is not None else []
    if not added or not len(batch):
        return priors
    preference = isinstance(serving.reward_critic, PreferenceRewardCritic)
    y = batch.outcome[0] if preference and batch.outcome is not None else batch.reward
    y, action = y.reshape(-1).double(), batch.action.reshape(-1)
    w = torch.ones_like(y) if weight is None else weight.double()
    levels = {}
    for k, name in enumerate(serving.agents):
        mine = action == k
        if name not in serving.meta.retired and float(w[mine].sum()) >= LEADER_MIN_RECORDS:
            levels[k] = float((w[mine] * y[mine]).sum() / w[mine].sum())
    out = list(priors)
    for k, name in enumerate(serving.agents):
        others = [level for j, level in levels.items() if j != k]
        if name in added and priors[k] is None and others:
            out[k] = max(others)
    return out


def uses_shared_slope(cfg: RetrainConfig, serving: Policy) -> bool:
    """Whether this round shrinks the reward critic towards the agents' shared slope
    (``cfg.shared_slope``; ``auto``: once an agent was added at run time)."""
    if cfg.shared_slope != "auto":
        return cfg.shared_slope == "always"
    return bool(serving.meta.exploration is not None and serving.meta.exploration.added)


#: a young agent trails everywhere when its optimistic estimate reaches the leader's on at most this share of prompts
TRAILS_SHARE = 0.05
#: the newest logged prompts the young agents are judged on
TRAILS_PROMPTS = 2000


@torch.no_grad()
def trails_everywhere(candidate: Policy, obs: torch.Tensor, agent: int, z: float) -> bool:
    """Whether the reward critic of ``candidate`` is sure that ``agent`` trails: on at most
    :data:`TRAILS_SHARE` of the newest :data:`TRAILS_PROMPTS` logged prompts does its upper bound
    ``Q̂_agent + z·σ_agent`` reach the best estimate of the other agents in service.

    Args:
        obs: ``[M, 1, D]`` float32, the round's logged observations.
        agent: the agent's index. z: the bound's width in posterior standard deviations.
    """
    critic = candidate.reward_critic
    if critic is None or not len(obs):
        return False
    x = obs[-TRAILS_PROMPTS:]
    q = critic(x).reshape(len(x), -1)  # [M, K]
    upper = q[:, agent] + z * critic.width(x, [agent]).reshape(len(x))
    others = torch.ones(q.shape[1], dtype=torch.bool)
    others[agent] = False
    for name in candidate.meta.retired:
        others[candidate.agents.index(name)] = False
    if not bool(others.any()):
        return False
    leader = q[:, others].max(dim=1).values
    return float((upper >= leader).double().mean()) <= TRAILS_SHARE


def logged_gate(logged: dict[str, Any] | None) -> dict[str, Any]:
    """The learner's gate: publish unless the held-out doubly robust difference, candidate -
    serving, lies below ``-logged_margin`` at the configured confidence (``worse``). ``better``,
    ``inconclusive`` and ``too_few`` pass: the candidate is the same learner on more data, and only
    clear evidence against it holds it back. No dataset split is consulted.

    Returns:
        ``{"rule", "static", "logged", "passed", "reason"}`` (``static`` None), as the job's gate.
    """
    rule = "logged worse: fail; otherwise pass (a refit on more data is kept unless shown worse)"
    if logged is None:
        return {"rule": rule, "static": None, "logged": None, "passed": True,
                "reason": "no held-out decisions this round: the refit on more data is kept"}
    lo, hi = logged["difference"]["ci"]
    diff = logged["difference"]["dr"]
    passed = logged["verdict"] != "worse"
    reason = (f"held-out logged data ({logged['decisions']} decisions, {logged['verdict']}): candidate - serving "
              f"= {diff:+.4f} [{lo:+.4f}, {hi:+.4f}] at {logged['confidence']:g}")
    return {"rule": rule, "static": None, "logged": logged, "passed": bool(passed), "reason": reason}


def bandit_round(cfg: RetrainConfig, serving: Policy, history: list[tuple[str, Any]],
                 entries: list[tuple[str, Any]]) -> BanditRound:
    """Refit the serving policy's reward critic and actor on ``history`` and this round's training
    share of ``entries``; judge the candidate on the held-out share.

    Args:
        cfg: the run's settings (``ridge``, ``kl_temperature``, ``entropy_temperature``, ``actor_*``,
            ``gamma_scale``, ``optimism``, ``half_life_records``, ``half_life_s``,
            ``holdout_fraction``, ``min_ess``, ``confidence``, ``seed``).
        serving: the serving policy (it has a reward critic); it is not changed.
        history: ``(entry_id, record)`` replayed from earlier rounds, any order.
        entries: this round's new ``(entry_id, record)``.

    Returns:
        :class:`BanditRound`.
    """
    cost_weight = cost_weight_of(serving, cfg)
    fresh_train, held_entries = (split_held_out(entries, cfg.holdout_fraction) if cfg.holdout_fraction
                                 else (entries, []))
    batch = build_batch(history + fresh_train, serving, cost_weight)
    held = build_batch(held_entries, serving, cost_weight)
    candidate = _copy(serving)
    assert candidate.reward_critic is not None
    fresh_ids = {entry_id for entry_id, _ in fresh_train}
    fresh = torch.tensor([eid in fresh_ids for eid in batch.entry_ids], dtype=torch.bool)
    since = dict(serving.meta.history_since)
    shared = uses_shared_slope(cfg, serving)
    weight, changes = _weights(cfg, serving, batch, fresh, since, shared, critic_priors(serving, batch, None))
    priors = critic_priors(serving, batch, weight)  # a leader's records from before its change do not count
    fit = fit_reward_critic(candidate.reward_critic, batch.obs, batch.action, batch.reward, cfg.ridge,
                            priors, sample_weight=weight, outcome=batch.outcome, shared=shared)
    if shared:
        logger.info("reward critic: shrunk towards the shared slope x %.2f (how far it carries between agents)",
                    fit.transfer)
    train: dict[str, float] = {"critic_records": float(fit.records), "critic_mse": fit.mse,
                               "critic_slope_transfer": fit.transfer,
                               "reward_mean": float(batch.reward.mean()) if len(batch) else 0.0,
                               "changes_detected": float(len(changes))}
    if weight is not None:
        train["critic_effective_records"] = float(weight.sum())
    if len(batch):
        generator = torch.Generator().manual_seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        with torch.no_grad():
            old = serving.probabilities(batch.obs).reshape(len(batch), -1)
            reward = candidate.reward_critic(batch.obs).reshape(len(batch), -1)
        target = actor_targets(old, reward, cfg.kl_temperature, cfg.entropy_temperature)
        train |= fit_actor(candidate.actor, batch.obs, target, cfg.actor_epochs, cfg.actor_lr,
                           cfg.actor_batch_size, generator, cfg.actor_max_steps)
    # an agent added at run time (policy.agent_set) is explored as young until the critic has enough of its
    # records, or has enough to be sure it trails the leader on (nearly) every prompt
    def still_young(k: int) -> bool:
        if fit.per_agent[k] >= cfg.young_records:
            return False
        sure = cfg.young_exit_z is not None and fit.per_agent[k] >= cfg.young_min_records
        return not (sure and trails_everywhere(candidate, batch.obs, k, cfg.young_exit_z))

    young = [name for name in (serving.meta.exploration.young if serving.meta.exploration else [])
             if still_young(serving.agents.index(name))]
    exploration = ExplorationMeta(gamma=igw_gamma(fit.records, len(serving.agents), cfg.gamma_scale),
                                  gamma_scale=cfg.gamma_scale, records=fit.records, optimism=cfg.optimism,
                                  young=young, added=serving.meta.exploration.added if serving.meta.exploration else [])
    candidate.meta = candidate.meta.model_copy(update={"exploration": exploration, "history_since": since})
    logged = _judge(candidate, serving, held, cfg) if len(held) else None
    return BanditRound(candidate=candidate, cost_weight=cost_weight, used=len(batch), sessions=batch.sessions,
                       skipped=merged_skipped(batch, held), train=train, gate=logged_gate(logged))


def round_alarms(cfg: RetrainConfig, serving: Policy, entries: list[tuple[str, Any]]) -> list[str]:
    """The agents whose pending ``entries`` already do worse than the serving critic expects
    (:func:`~training.retrain.change.pending_alarms` at ``change_z``, ``change_min_shift``,
    ``change_min_records``): a round runs now instead of waiting for its record count. Only the
    records the round would train on count (not its held-out share), so the round's own change
    test has as many of the agent's new records as the alarm had. Empty when ``change_z`` is None,
    or the policy has no reward critic. Each alarm is logged."""
    if cfg.change_z is None or serving.reward_critic is None or not entries:
        return []
    train = split_held_out(entries, cfg.holdout_fraction)[0] if cfg.holdout_fraction else entries
    batch = build_batch(train, serving, cost_weight_of(serving, cfg))
    if not len(batch):
        return []
    names = []
    for test in pending_alarms(serving.reward_critic, batch.obs, batch.action, batch.reward, cfg.change_z,
                               cfg.change_min_shift, cfg.change_min_records):
        names.append(serving.agents[test.agent])
        logger.warning("agent %s: its %d pending records do worse than the policy's critic expects (mean residual "
                       "%+.3f, z %+.1f): a round now, without waiting for the round's record count", names[-1],
                       test.records, test.shift, test.z)
    return names


def _weights(cfg: RetrainConfig, serving: Policy, batch: LoggedBatch, fresh: torch.Tensor,
             since: dict[str, str], shared: bool, priors: list[float | None]) -> tuple[torch.Tensor | None, list[str]]:
    """The critic's ``[M]`` sample weights (None: 1 each): the forgetting horizon's
    (:func:`recency_weights`), 0 for an agent's records from before its ``since`` time, and the
    change test (:func:`detect_changes`, its critic shrunk as the round's: ``shared``, ``priors``) run on the
    rest; an agent it finds changed gets the time of its first record after the estimated change
    in ``since`` (updated in place), and the names of those agents."""
    created = batch.created_at
    if created is None or not len(batch):
        return None, []
    weight = recency_weights(created, cfg.half_life_records, cfg.half_life_s)
    weight = torch.ones(len(batch), dtype=torch.float64) if weight is None else weight
    action = batch.action.reshape(-1)

    def forget_before() -> None:
        for k, name in enumerate(serving.agents):
            if name in since:
                weight[(action == k) & (created < datetime.fromisoformat(since[name]).timestamp())] = 0.0

    forget_before()
    changed: list[str] = []
    if cfg.change_z is not None:
        assert serving.reward_critic is not None
        tests = detect_changes(copy.deepcopy(serving.reward_critic), batch.obs, batch.action, batch.reward, fresh,
                               weight, cfg.ridge, priors, cfg.change_z, cfg.change_min_shift,
                               cfg.change_min_records, outcome=batch.outcome,
                               shared=shared, created=created)
        for test in tests:
            if test.changed:
                name = serving.agents[test.agent]
                assert test.since is not None
                since[name] = datetime.fromtimestamp(test.since, UTC).isoformat()
                changed.append(name)
                logger.warning("agent %s: its new feedback departs from its history (mean residual %+.3f, "
                               "z %+.1f over %d records, the last %d of them after the change): its records "
                               "before the change are forgotten", name, test.shift, test.z, test.records, test.after)
        forget_before()
    return weight, changed


def _judge(candidate: Policy, serving: Policy, held: LoggedBatch, cfg: RetrainConfig) -> dict[str, Any]:
    return logged_verdict(off_policy_terms(candidate, None, held), off_policy_terms(serving, None, held),
                          cfg.min_ess, cfg.confidence, cfg.logged_margin)


def _copy(policy: Policy) -> Policy:
    """A deep copy of the networks (the serving policy stays as it is)."""
    return Policy(policy.path, policy.meta, copy.deepcopy(policy.actor), copy.deepcopy(policy.critic),
                  copy.deepcopy(policy.reward_critic))
