"""Settings of one ``agent-router retrain`` run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from training.config import PPOConfig

#: PPO settings of a retraining run (:class:`~training.config.PPOConfig`'s defaults for the others)
PPO_DEFAULTS: dict[str, Any] = {
    "update_epochs": 10, "num_minibatches": 4, "lr": 3e-4, "clip_coef": 0.2, "ent_coef": 0.0, "vf_coef": 0.5,
    "max_grad_norm": 0.5, "gae_lambda": 0.95, "norm_adv": True, "clip_vloss": False, "target_kl": None,
}
#: PPO fields accepted at the top level of :class:`RetrainConfig` (they were top-level fields once)
PPO_SHORTHAND = frozenset(PPO_DEFAULTS)


class RetrainConfig(BaseModel):
    """What a retraining run reads, how it trains, and when it publishes.

    Attributes:
        checkpoint_root: directory of checkpoint versions the servers serve from
            (``ROUTER_CHECKPOINT``); the candidate is written here when it passes the gate, under
            ``<root>/rejected`` when it does not.
        redis_url, redis_prefix: the experience stream ``<prefix>:experience`` and the published
            policy key ``<prefix>:policy:current``; None: read the SQLite store instead.
        sqlite_path: the SQLite experience store (``ROUTER_SQLITE_PATH``) when ``redis_url`` is None.
        group, consumer: Redis consumer group and consumer name of the job.
        min_records: fewer new records than this: nothing is trained (they stay pending).
        max_records: most records used by one run (the oldest first).
        ppo: PPO on the logged batch (:class:`~training.config.PPOConfig`; defaults
            :data:`PPO_DEFAULTS`). ``total_steps``, ``rollout_len``, ``anneal_lr``, ``gamma``,
            ``norm_value`` and ``ent_coef_end`` are not used (``norm_value`` is the serving
            policy's). Its fields in :data:`PPO_SHORTHAND` may also be given at the top level
            (``update_epochs=20`` is ``ppo.update_epochs=20``), as may dotted ``ppo.<field>`` keys.
        gamma: discount within a session; None: the serving policy's training ``ppo.gamma``.
        cost_weight: reward per USD, ``reward = quality - cost_weight * cost_usd``; None: the
            serving policy's training ``env.cost_weight``.
        sim_iterations: MAPPO iterations on simulated PromptEnv rollouts (the serving policy's
            training data and config) after the logged update; 0: logged data only.
        holdout_fraction: share of the new sessions (by a hash of the session id, else of the
            decision id) kept out of training: the gate estimates both policies' value on them
            (:mod:`training.retrain.offpolicy`). 0: no logged estimate, the static split alone.
        min_ess: fewer effective held-out samples than this, for either policy: the gate refuses.
        confidence: of the interval of the logged difference, candidate - serving.
        eval_split: the dataset split of the static second opinion.
        margin: the static opinion passes the candidate unless its mean reward is lower than the
            serving policy's by more than this.
        logged_margin: the logged verdict's non-inferiority margin, reward units: it is ``worse``
            only when the whole interval of candidate - serving lies below ``-logged_margin``
            (:func:`~training.retrain.offpolicy.logged_verdict`), so two near-identical refits are not
            told apart by a tight -0.0005.
        publish: publish a candidate that passes the gate (Redis key + pub/sub message).
        seed: seeds minibatch order and the simulated rollouts.
        warmup_records: a policy with a reward critic that has learned from fewer than
            ``min_records`` records retrains once ``max(warmup_records, records it learned from)``
            new ones are logged: the first rounds come after 25, 25, 50, 100, ... records, up to
            ``min_records`` (:func:`training.retrain.job.round_size`).
        replay_records: a policy with a reward critic (``agent-router init``, the learner of
            :mod:`training.retrain.learner`) is refitted each round on the newest this many
            records at or before the watermark as well as the new ones.
        ridge: the reward critic's ridge penalty ``λ`` (:func:`~training.retrain.learner.fit_reward_critic`).
        shared_slope: when every agent's reward critic is shrunk towards the slope the agents
            share (:func:`~training.retrain.learner.shared_slope`) rather than towards a constant:
            ``auto`` (the default), once the policy has an agent added at run time
            (``exploration.added``), so that the newcomer and the others are judged alike; ``always``;
            ``never``. The slope is scaled by how far it carries from one agent to another (0 for
            specialists with opposite strengths; ``docs/learning.md``, "A new agent and the shared
            slope").
        kl_temperature: ``η`` of the actor's trust region, reward units (smaller: larger steps).
        entropy_temperature: ``τ`` of the actor's entropy term, reward units: old evidence fades
            by ``η/(η+τ)`` a round and the policy tends to ``softmax(Q̂/τ)``.
        actor_epochs, actor_lr, actor_batch_size: the actor's cross-entropy fit.
        actor_max_steps: at most this many of its Adam steps a round, however long the history.
        gamma_scale: exploration's ``γ = gamma_scale · sqrt(K · records)`` (:mod:`policy.exploration`).
        optimism: exploration measures each gap to ``q̂_k + optimism · σ_k``, the critic's upper
            confidence bound (0: to its estimate).
        young_records: an agent added at run time is explored as if level with the leader, on every
            prompt, until the critic has this many of its records (:mod:`policy.exploration`).
        young_min_records, young_exit_z: ... or until it has ``young_min_records`` and its upper
            bound ``q̂ + young_exit_z · σ`` is below the leader's estimate on almost every logged
            prompt (:func:`~training.retrain.bandit_round.trails_everywhere`); None: no early end.
        half_life_records, half_life_s: the forgetting horizon of the reward critic: a record
            counts ``0.5^(age / half_life)``, its age in newer decisions or in seconds
            (:func:`~training.retrain.learner.recency_weights`); None: not forgotten that way.
        change_z, change_min_shift, change_min_records: the change test of each agent's new
            feedback against its history (:mod:`training.retrain.change`): it fires at a mean
            residual of at least ``change_min_shift`` reward units and ``change_z`` standard
            errors, on at least ``change_min_records`` new and earlier records; ``change_z`` None:
            no test.
    """

    model_config = ConfigDict(extra="forbid")

    checkpoint_root: Path = Path("checkpoints")
    redis_url: str | None = None
    redis_prefix: str = "agent-router"
    sqlite_path: Path = Path("var/experience.sqlite3")
    group: str = Field(default="retrain", min_length=1)
    consumer: str = Field(default="retrain-1", min_length=1)
    min_records: int = Field(default=1, ge=1)
    max_records: int = Field(default=1_000_000, ge=1)
    ppo: PPOConfig = Field(default_factory=lambda: PPOConfig(**PPO_DEFAULTS))
    gamma: float | None = Field(default=None, ge=0, le=1)
    cost_weight: float | None = Field(default=None, ge=0)
    sim_iterations: int = Field(default=0, ge=0)
    holdout_fraction: float = Field(default=0.2, ge=0.0, lt=1.0)
    min_ess: float = Field(default=30.0, ge=1.0)
    confidence: float = Field(default=0.95, gt=0.0, lt=1.0)
    eval_split: Literal["train", "val", "test"] = "val"
    margin: float = Field(default=0.005, ge=0)
    logged_margin: float = Field(default=0.005, ge=0)
    publish: bool = True
    seed: int = 0
    warmup_records: int = Field(default=25, ge=1)
    replay_records: int = Field(default=50_000, ge=0)
    ridge: float = Field(default=10.0, gt=0.0)
    shared_slope: Literal["auto", "always", "never"] = "auto"
    kl_temperature: float = Field(default=0.02, gt=0.0)
    entropy_temperature: float = Field(default=0.01, ge=0.0)
    actor_epochs: int = Field(default=8, ge=1)
    actor_lr: float = Field(default=1e-3, gt=0.0)
    actor_batch_size: int = Field(default=256, ge=1)
    actor_max_steps: int = Field(default=200, ge=1)
    gamma_scale: float = Field(default=10.0, ge=0.0)
    optimism: float = Field(default=0.3, ge=0.0)
    young_records: int = Field(default=100, ge=0)
    young_min_records: int = Field(default=25, ge=1)
    young_exit_z: float | None = Field(default=1.0, gt=0.0)
    half_life_records: int | None = Field(default=None, gt=0)
    half_life_s: float | None = Field(default=None, gt=0.0)
    change_z: float | None = Field(default=4.0, gt=0.0)
    change_min_shift: float = Field(default=0.05, ge=0.0)
    change_min_records: int = Field(default=20, ge=2)

    @model_validator(mode="before")
    @classmethod
    def _nest_ppo(cls, data: Any) -> Any:
        """Move top-level :data:`PPO_SHORTHAND` keys and ``ppo.<field>`` keys under ``ppo``, on top
        of :data:`PPO_DEFAULTS` (or of a given ``PPOConfig``)."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        moved = {k: data.pop(k) for k in list(data) if k in PPO_SHORTHAND}
        moved |= {k.removeprefix("ppo."): data.pop(k) for k in list(data)
                  if isinstance(k, str) and k.startswith("ppo.")}
        ppo = data.get("ppo", {})
        if isinstance(ppo, PPOConfig):
            ppo = ppo.model_dump()
        if isinstance(ppo, dict):
            data["ppo"] = PPO_DEFAULTS | ppo | moved
        return data
