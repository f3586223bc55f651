"""The retraining job: logged feedback -> a candidate policy -> the gate -> a new served version.

One run (:func:`run_retrain`):

1. **Serving policy**: the version published in Redis (``<prefix>:policy:current``), else the
   newest version in the checkpoint root. The candidate is warm-started from it.
2. **Watermark**: the last entry id used by any checkpoint of the root (published, unpublished or
   rejected; ``policy.json`` ``data.watermark``). Entries up to it were trained on already.
3. **Recovery**: a version that passed the gate but was never published (the previous run stopped
   between its checkpoint and its publish) is published now.
4. **Read** unacknowledged entries (:mod:`.source`); those at or before the watermark are
   acknowledged unused; fewer than ``min_records`` new ones: stop, leaving them pending.
5. **Train**: per-session trajectories (:mod:`.trajectories`), clipped PPO against the logged
   propensities (:mod:`.offline_ppo`), optionally MAPPO on simulated PromptEnv rollouts.
6. **Gate** (:func:`gate_verdict`): the candidate's and the serving policy's value on held-out logged
   sessions (``holdout_fraction`` of them, never trained on; SNIPS and doubly robust estimates,
   :mod:`.offpolicy`) decide when their difference is clear at ``confidence``; when it is not,
   the mean reward of the greedy choice on the static ``eval_split`` decides (a second opinion,
   which cannot overrule a clear logged verdict); too few effective held-out samples: refused.
7. **Checkpoint** (atomic, fsynced) with the new watermark: in the root when the gate passed,
   in ``<root>/rejected`` when not. **Publish** (SET + PUBLISH + a record of the publish, one
   MULTI), then **acknowledge** the entries.

A crash anywhere leaves either no checkpoint (the entries are still pending: the re-run trains on
them) or a durable checkpoint whose watermark covers them (the re-run acknowledges them unused and
finishes the publish), so each record is trained on once.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import redis
import torch
from redis.exceptions import RedisError

from contract.errors import UserError
from contract.policy_meta import PolicyMeta
from experience.agent_changes import AgentChanges, open_agent_changes
from experience.backend import open_source
from experience.readers import ExperienceSource, SourceError
from policy.artefact import Policy
from policy.checkpoint import META, CheckpointError, load_checkpoint, read_meta, resolve_checkpoint, save_checkpoint
from policy.versions import VersionKeys
from training.config import TrainConfig, checkpoint_config
from training.retrain.agent_set import bring_to_agent_set
from training.retrain.bandit_round import bandit_round, round_alarms
from training.retrain.config import RetrainConfig
from training.retrain.offline_ppo import logged_update
from training.retrain.offpolicy import logged_verdict, off_policy_terms
from training.retrain.trajectories import build_batch, merged_skipped, split_held_out
from training.update import make_optimizer, set_learning_rates
from training.value_norm import ValueNorm

logger = logging.getLogger(__name__)

REJECTED = "rejected"


@dataclass
class RetrainResult:
    """What one run did.

    Attributes:
        status: ``published`` (passed the gate, published), ``saved`` (passed, not published:
            ``publish`` off or no Redis), ``rejected`` (failed the gate; saved under
            ``<root>/rejected``), ``too_few`` (fewer new records than ``min_records``).
        serving_version: the policy the candidate was warm-started from.
        records: new records read; ``used`` of them trained on (the others in ``skipped``).
        sessions: sessions they formed.
        stale_acked: entries at or before the watermark acknowledged unused (a crashed run's).
        recovered: version published by recovery, if any.
        checkpoint: the candidate's directory; version: its version; watermark: its last entry id.
        gate: :func:`gate_verdict`'s ``{"rule", "static", "logged", "passed", "reason"}``: ``static``
            is ``{"split", "serving", "candidate", "margin", "passed"}`` (mean reward, quality,
            cost_usd_per_1k of both on the dataset split), ``logged`` the off-policy estimates
            (:func:`~training.retrain.offpolicy.logged_verdict`).
        train: metrics of the update.
        agent_changes: the recorded agent changes applied before the round (``"+name"``,
            ``"-name"``; :mod:`.agent_set`): a round runs on them even without new records.
        alarms: agents whose new records, fewer than a round waits for, already did worse than the
            serving critic expects (:func:`~training.retrain.bandit_round.round_alarms`): the round
            ran on them early.
    """

    status: str
    serving_version: str
    records: int = 0
    used: int = 0
    sessions: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    stale_acked: int = 0
    recovered: str | None = None
    checkpoint: str | None = None
    version: str | None = None
    watermark: str | None = None
    gate: dict[str, Any] = field(default_factory=dict)
    train: dict[str, float] = field(default_factory=dict)
    agent_changes: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions(root: Path) -> list[tuple[Path, PolicyMeta]]:
    out = []
    for parent in (root, root / REJECTED):
        if not parent.is_dir():
            continue
        for child in parent.iterdir():
            if not (child / META).is_file():
                continue
            try:
                out.append((child, read_meta(child)))
            except CheckpointError:
                continue
    return out


def _watermark_of(meta: PolicyMeta, source: ExperienceSource) -> str | None:
    mark = meta.watermark
    if mark is not None and mark.source == source.kind and mark.name == source.name:
        return mark.id
    return None


def last_watermark(root: Path, source: ExperienceSource) -> str | None:
    """The latest entry id recorded by any checkpoint under ``root`` (and ``root/rejected``)."""
    marks = [m for _, meta in _versions(root) if (m := _watermark_of(meta, source)) is not None]
    return max(marks, key=source.order_key) if marks else None


class Publisher:
    """The policy version published to every server replica (:mod:`policy.versions`)."""

    def __init__(self, url: str, prefix: str) -> None:
        self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0)
        self.keys = VersionKeys(prefix)

    def current(self) -> str | None:
        try:
            return self._redis.get(self.keys.current)
        except (RedisError, OSError) as exc:
            raise SourceError(f"cannot read {self.keys.current}: {exc}") from None

    def was_published(self, version: str) -> bool:
        try:
            return bool(self._redis.sismember(self.keys.published, version))
        except (RedisError, OSError) as exc:
            raise SourceError(f"cannot read {self.keys.published}: {exc}") from None

    def publish(self, version: str) -> None:
        """:meth:`policy.versions.VersionKeys.queue_publish`, executed.

        Raises:
            SourceError: Redis is unreachable or refused.
        """
        try:
            with self._redis.pipeline(transaction=True) as pipe:
                self.keys.queue_publish(pipe, version).execute()
        except (RedisError, OSError) as exc:
            raise SourceError(f"could not publish {version!r}: {exc}") from None

    def close(self) -> None:
        self._redis.close()


def round_size(cfg: RetrainConfig, learned: int | None) -> int:
    """New records a round needs: ``cfg.min_records``; for a policy with a reward critic that has
    learned from ``learned`` records (``exploration.records``; None for other policies),
    ``max(cfg.warmup_records, learned)`` while that is smaller (rounds double in size while the
    policy knows little)."""
    if learned is None:
        return cfg.min_records
    return min(cfg.min_records, max(cfg.warmup_records, learned))


def _resolve_ref(root: Path, ref: str | None) -> Path:
    if ref:
        path = root / ref
        if "/" not in ref and "\\" not in ref and (path / META).is_file():
            return path
        logger.warning("published policy %r not found under %s; using the newest version", ref, root)
    return resolve_checkpoint(root)


def gate_verdict(static: dict[str, Any], logged: dict[str, Any] | None) -> dict[str, Any]:
    """The gate's decision: ``static`` (:func:`_gate`, on the dataset split) and ``logged``
    (:func:`~training.retrain.offpolicy.logged_verdict`, None when off).

    Rule: logged ``better`` passes and ``worse`` fails whatever the static split says;
    ``inconclusive`` defers to the static opinion; ``too_few`` fails. Without a logged estimate the
    static opinion decides. Returns ``{"rule", "static", "logged", "passed", "reason"}``.
    """
    if logged is None:
        passed, reason = static["passed"], "no held-out logged data (holdout_fraction 0): the static split decides"
    elif logged["verdict"] == "too_few":
        c, s = logged["candidate"]["ess"], logged["serving"]["ess"]
        passed, reason = False, (f"too few held-out logged decisions: {logged['decisions']} held out, effective "
                                 f"sample size {c:.1f} (candidate) and {s:.1f} (serving), need {logged['min_ess']:g}")
    elif logged["verdict"] == "inconclusive":
        passed, reason = static["passed"], "the logged difference is not clear: the static split decides"
    else:
        passed = logged["verdict"] == "better"
        lo, hi = logged["difference"]["ci"]
        reason = (f"logged data: candidate - serving = {logged['difference']['dr']:+.4f} "
                  f"[{lo:+.4f}, {hi:+.4f}] at {logged['confidence']:g}")
    rule = ("logged better: pass; logged worse: fail; inconclusive: static split; too few: fail"
            if logged is not None else "static split")
    return {"rule": rule, "static": static, "logged": logged, "passed": bool(passed), "reason": reason}


def _gate(serving: Policy, candidate: Policy, cfg: RetrainConfig, train_cfg: TrainConfig, splits,
          cost_weight: float) -> dict[str, Any]:
    from training.evaluation.offline import policy_choices, summarize

    ds, emb = splits.splits[cfg.eval_split], splits.embeddings(cfg.eval_split)
    tokens = ds.prompt_tokens
    scores = {name: summarize(policy_choices(p, emb, tokens), ds.quality, ds.cost_usd, cost_weight)
              for name, p in (("serving", serving), ("candidate", candidate))}
    passed = scores["candidate"]["reward"] >= scores["serving"]["reward"] - cfg.margin
    return {"split": cfg.eval_split, "prompts": len(ds), **scores, "margin": cfg.margin, "passed": bool(passed)}


def run_retrain(cfg: RetrainConfig, source: ExperienceSource | None = None,
                agent_changes: AgentChanges | None = None) -> RetrainResult:
    """Run one retraining job (see the module docstring).

    Args:
        source: the experience log (None: the one ``cfg`` names).
        agent_changes: the recorded agent changes (None: the record beside ``cfg``'s experience log).

    Raises:
        UserError: no checkpoint under ``cfg.checkpoint_root``, its dataset missing, a
            multi-router policy with a centralised critic (its state needs every router's obs);
            SourceError (a UserError): the experience log or Redis cannot be reached.
    """
    root = Path(cfg.checkpoint_root)
    source = source or open_source(cfg.redis_url, prefix=cfg.redis_prefix, group=cfg.group, consumer=cfg.consumer,
                                   sqlite_path=cfg.sqlite_path)
    publisher = Publisher(cfg.redis_url, cfg.redis_prefix) if cfg.redis_url else None
    own_changes = agent_changes is None
    if agent_changes is None:
        agent_changes = open_agent_changes(cfg.redis_url, prefix=cfg.redis_prefix, sqlite_path=cfg.sqlite_path)
    try:
        return _run(cfg, root, source, publisher, agent_changes)
    finally:
        source.close()
        if publisher is not None:
            publisher.close()
        if own_changes:
            agent_changes.close()


def _run(cfg: RetrainConfig, root: Path, source: ExperienceSource, publisher: Publisher | None,
         agent_changes: AgentChanges) -> RetrainResult:
    serving_dir = _resolve_ref(root, publisher.current() if publisher else None)
    watermark = last_watermark(root, source)
    recovered = None
    if publisher is not None:
        newest = resolve_checkpoint(root)
        newest_meta = read_meta(newest)
        run = newest_meta.retrain or {}
        # passed the gate, meant to be published, never published: finish the earlier run's publish
        if ((run.get("gate") or {}).get("passed") and run.get("config", {}).get("publish") and cfg.publish
                and not publisher.was_published(newest_meta.version)):
            publisher.publish(newest.name)
            recovered, serving_dir = newest_meta.version, newest
            logger.info("published %s, left unpublished by an earlier run", recovered)
    serving = load_checkpoint(serving_dir)
    routers = serving.layout.num_routers
    if routers > 1 and serving.meta.network.centralised_critic:
        raise UserError(f"{serving_dir}: retrain supports single-router policies or IPPO critics; this one "
                        f"has {routers} routers and a centralised critic")
    if serving.meta.network.actor == "outcome":
        raise UserError(f"policy {serving.version} routes by every agent's outcome fitted on full-information data "
                        "(network.actor outcome): retraining it from logged feedback is not supported; fit it again "
                        "with agent-router train, or serve a policy of the learner (agent-router init)")
    serving, applied = bring_to_agent_set(root, serving, agent_changes)
    result = RetrainResult(status="too_few", serving_version=serving.version, recovered=recovered,
                           agent_changes=applied)

    entries = source.read(watermark, cfg.max_records)
    if watermark is not None:
        stale = [eid for eid, _ in entries if source.order_key(eid) <= source.order_key(watermark)]
        if stale:
            source.ack(stale)
            entries = [(eid, rec) for eid, rec in entries if eid not in set(stale)]
        result.stale_acked = len(stale)
    result.records = len(entries)
    learned = serving.meta.exploration.records if serving.meta.exploration is not None else None
    if len(entries) < round_size(cfg, learned) and not applied:
        result.alarms = round_alarms(cfg, serving, entries)  # a break does not wait for the round's count
        if not result.alarms:
            return result

    if serving.reward_critic is not None:
        history = source.history(watermark, cfg.replay_records) if watermark is not None and cfg.replay_records else []
        outcome = bandit_round(cfg, serving, history, entries)
        candidate, value_norm, cost_weight, gamma = outcome.candidate, None, outcome.cost_weight, None
        result.used, result.sessions, result.skipped = outcome.used, outcome.sessions, outcome.skipped
        result.train, result.gate = outcome.train, outcome.gate
    else:
        candidate, value_norm, cost_weight, gamma = _ppo_round(cfg, serving, entries, result)
    last = max((eid for eid, _ in entries), key=source.order_key) if entries else watermark
    meta = serving.meta.content()
    if last is not None:
        meta["data"]["watermark"] = {"source": source.kind, "name": source.name, "id": last}
    if value_norm is not None:
        meta["value_norm"] = value_norm.to_meta()
    if candidate.meta.exploration is not None:
        meta["exploration"] = candidate.meta.exploration.model_dump()
    meta["history_since"] = dict(candidate.meta.history_since)
    meta["eval"] = {"retrain_gate": result.gate}
    meta["retrain"] = {"parent_version": serving.version, "agent_changes": applied, "alarms": result.alarms,
                       "records": result.records,
                       "used": result.used,
                       "sessions": result.sessions, "skipped": result.skipped, "cost_weight": cost_weight,
                       "gamma": gamma, "config": cfg.model_dump(mode="json", exclude={"redis_url"}),
                       "train": result.train, "gate": result.gate}
    passed = result.gate["passed"]
    path = save_checkpoint(root if passed else root / REJECTED, candidate.actor, candidate.critic, meta,
                           candidate.reward_critic)
    result.checkpoint, result.watermark = str(path), last
    result.version = read_meta(path).version
    if not passed:
        result.status = "rejected"
    elif publisher is not None and cfg.publish:
        publisher.publish(path.name)
        result.status = "published"
    else:
        result.status = "saved"
    source.ack([eid for eid, _ in entries])
    return result


def _ppo_round(cfg: RetrainConfig, serving: Policy, entries: list, result: RetrainResult):
    """The logged-PPO round of a policy without a reward critic (see the module docstring): the
    candidate, its value normaliser, the cost weight and gamma; fills ``result``'s counts, train
    figures and gate."""
    train_cfg = checkpoint_config(serving.meta, hint="retrain evaluates on its held-out split: run from the "
                                                      "project directory")
    cost_weight = train_cfg.env.cost_weight if cfg.cost_weight is None else cfg.cost_weight
    gamma = train_cfg.ppo.gamma if cfg.gamma is None else cfg.gamma
    train_entries, held_entries = (split_held_out(entries, cfg.holdout_fraction) if cfg.holdout_fraction
                                   else (entries, []))
    batch = build_batch(train_entries, serving, cost_weight)
    held = build_batch(held_entries, serving, cost_weight)
    result.used, result.sessions, result.skipped = len(batch), batch.sessions, merged_skipped(batch, held)
    serving_value_norm = ValueNorm.from_meta(serving.meta.value_norm, train_cfg.ppo.norm_value)

    from training.data import load_splits

    splits = load_splits(train_cfg)
    candidate = load_checkpoint(serving.path)  # a second copy, trained in place
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    value_norm = ValueNorm.from_meta(serving.meta.value_norm, train_cfg.ppo.norm_value)
    optimizer = make_optimizer(candidate.actor, candidate.critic, cfg.ppo)
    if len(batch):
        result.train = logged_update(candidate.actor, candidate.critic, value_norm, optimizer, batch, cfg, gamma,
                                     generator)
    if cfg.sim_iterations:
        result.train |= _simulate(cfg, train_cfg, splits, candidate, value_norm)

    static = _gate(serving, candidate, cfg, train_cfg, splits, cost_weight)
    logged = None
    if cfg.holdout_fraction:
        logged = logged_verdict(off_policy_terms(candidate, value_norm, held),
                                off_policy_terms(serving, serving_value_norm, held), cfg.min_ess, cfg.confidence,
                                cfg.logged_margin)
    result.gate = gate_verdict(static, logged)
    return candidate, value_norm, cost_weight, gamma


def _simulate(cfg: RetrainConfig, train_cfg: TrainConfig, splits, candidate: Policy,
              value_norm: ValueNorm) -> dict[str, float]:
    """``cfg.sim_iterations`` MAPPO iterations on PromptEnv (the training split and env config the
    serving policy was trained with), continuing from the candidate's weights."""
    from training.run import build_env
    from training.trainer import MAPPOTrainer

    sim_cfg = train_cfg.model_copy(update={"seed": cfg.seed, "device": "cpu"})
    trainer = MAPPOTrainer(sim_cfg, build_env(sim_cfg, splits, "cpu"))
    trainer.actor.load_state_dict(candidate.actor.state_dict())
    trainer.critic.load_state_dict(candidate.critic.state_dict())
    trainer.value_norm.load_state_dict(value_norm.state_dict())
    set_learning_rates(trainer.optimizer, cfg.ppo)
    rewards = []
    for _ in range(cfg.sim_iterations):
        rewards.append(trainer.collect()["reward"])
        trainer.update()
    candidate.actor.load_state_dict(trainer.actor.state_dict())
    candidate.critic.load_state_dict(trainer.critic.state_dict())
    value_norm.load_state_dict(trainer.value_norm.state_dict())
    candidate.actor.eval()
    candidate.critic.eval()
    return {"sim_iterations": float(cfg.sim_iterations), "sim_reward_last": rewards[-1]}
