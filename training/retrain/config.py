"""Settings of one ``agent-router retrain`` run."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
        update_epochs, num_minibatches, lr, clip_coef, ent_coef, vf_coef, max_grad_norm,
        gae_lambda: PPO on the logged batch (Schulman et al. 2017, arXiv 1707.06347).
        gamma: discount within a session; None: the serving policy's training ``ppo.gamma``.
        cost_weight: reward per USD, ``reward = quality - cost_weight * cost_usd``; None: the
            serving policy's training ``env.cost_weight``.
        sim_iterations: MAPPO iterations on simulated PromptEnv rollouts (the serving policy's
            training data and config) after the logged update; 0: logged data only.
        eval_split: held-out split the gate compares the candidate and the serving policy on.
        margin: the candidate is published unless its mean reward is lower than the serving
            policy's by more than this.
        publish: publish a candidate that passes the gate (Redis key + pub/sub message).
        seed: seeds minibatch order and the simulated rollouts.
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
    update_epochs: int = Field(default=10, ge=1)
    num_minibatches: int = Field(default=4, ge=1)
    lr: float = Field(default=3e-4, gt=0)
    clip_coef: float = Field(default=0.2, gt=0)
    ent_coef: float = Field(default=0.0, ge=0)
    vf_coef: float = Field(default=0.5, ge=0)
    max_grad_norm: float = Field(default=0.5, gt=0)
    gamma: float | None = Field(default=None, ge=0, le=1)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    cost_weight: float | None = Field(default=None, ge=0)
    sim_iterations: int = Field(default=0, ge=0)
    eval_split: Literal["train", "val", "test"] = "val"
    margin: float = Field(default=0.005, ge=0)
    publish: bool = True
    seed: int = 0
