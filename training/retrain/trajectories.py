"""Experience records -> per-session trajectories, as flat tensors the PPO update can use.

A session is the records sharing a ``session_id`` (a record without one is a session of its
own), ordered by ``created_at``. Sessions are laid end to end in one time axis ``[M]``; ``done``
marks the last step of each, so GAE (:func:`training.gae.generalized_advantage_estimate`) never
carries an advantage across two sessions, and the end of a session is terminal (the conversation
is over: nothing is bootstrapped after it).
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch

from router.service import decode_embedding
from training.checkpoint import Policy


@dataclass
class LoggedBatch:
    """Logged decisions of ``S`` sessions, ``M`` steps in all, laid end to end.

    Attributes:
        obs: ``[M, 1, D]`` float32, the router's obs at decision time (embedding ++ load).
        action_mask: ``[M, 1, K]`` bool, the agents that were allowed.
        action: ``[M, 1]`` int64, the chosen agent.
        behaviour_log_prob: ``[M, 1]`` float32, log-probability with which the action was chosen:
            ``log(propensity)`` for a sampled (``explore``) decision, the logging policy's
            ``log_prob`` for an argmax one. The PPO ratio is taken against it.
        reward: ``[M, 1]`` float32, ``quality - cost_weight * cost_usd`` (cost missing: 0).
        done: ``[M, 1]`` bool, last step of its session (also ``terminated``).
        entry_ids: ``[M]`` entry ids, in the batch's order.
        sessions: ``S``.
        skipped: reasons -> count of records left out (they are still acknowledged).
    """

    obs: torch.Tensor
    action_mask: torch.Tensor
    action: torch.Tensor
    behaviour_log_prob: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    entry_ids: list[str]
    sessions: int
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.entry_ids)


def _time(record: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(record["created_at"])


def _check(record: dict[str, Any], policy: Policy, embed_dim: int) -> str | None:
    """Why ``record`` cannot be used with ``policy`` (None: it can)."""
    k = len(policy.agents)
    try:
        action = int(record["action"])
        if not 0 <= action < k or record.get("agent") != policy.agents[action]:
            return "agent not in the serving policy's action order"
        if len(record["load"]) != k or len(record["action_mask"]) != k:
            return "load or action_mask of another agent count"
        if not record["action_mask"][action]:
            return "chosen agent masked"
        if decode_embedding(record["embedding"]).shape != (embed_dim,):
            return "embedding of another width"
        quality = float(record["quality"])
        if not 0.0 <= quality <= 1.0:
            return "quality outside [0, 1]"
        _time(record)
        float(record["log_prob"])
    except (KeyError, TypeError, ValueError):
        return "malformed record"
    return None


def build_batch(entries: list[tuple[str, dict[str, Any]]], policy: Policy, cost_weight: float) -> LoggedBatch:
    """Rebuild per-session trajectories from ``entries`` (``(entry_id, record)``).

    Args:
        entries: experience records (:mod:`router.experience.base`), any order.
        policy: the policy being retrained (its agents, obs layout and embedding width).
        cost_weight: reward per USD.

    Returns:
        :class:`LoggedBatch` on CPU; records that do not fit ``policy`` are counted in ``skipped``.
    """
    layout = policy.meta["obs_layout"]
    extra = layout["num_routers"] if layout["include_agent_id"] else 0
    embed_dim = int(layout["obs_dim"]) - len(policy.agents) - int(extra)
    skipped: dict[str, int] = defaultdict(int)
    sessions: dict[str, list[tuple[datetime, str, dict[str, Any]]]] = defaultdict(list)
    for entry_id, record in entries:
        reason = _check(record, policy, embed_dim)
        if reason:
            skipped[reason] += 1
            continue
        key = record.get("session_id") or f"decision:{record['decision_id']}"
        sessions[key].append((_time(record), entry_id, record))
    ordered: list[tuple[str, dict[str, Any]]] = []
    done: list[bool] = []
    for steps in sessions.values():
        steps.sort(key=lambda s: (s[0], s[1]))
        ordered.extend((eid, rec) for _, eid, rec in steps)
        done.extend([False] * (len(steps) - 1) + [True])
    m = len(ordered)
    emb = np.stack([decode_embedding(r["embedding"]) for _, r in ordered]) if m else np.zeros((0, embed_dim))
    load = np.array([r["load"] for _, r in ordered], dtype=np.float32).reshape(m, len(policy.agents))
    obs = policy.build_obs(torch.as_tensor(emb, dtype=torch.float32), torch.from_numpy(load))
    mask = torch.tensor([r["action_mask"] for _, r in ordered], dtype=torch.bool).reshape(m, 1, -1)
    action = torch.tensor([int(r["action"]) for _, r in ordered], dtype=torch.long).reshape(m, 1)
    behaviour = [
        math.log(max(float(r["propensity"]), 1e-12)) if r.get("explore") and r.get("propensity") is not None
        else float(r["log_prob"])
        for _, r in ordered
    ]
    reward = [float(r["quality"]) - cost_weight * float(r.get("cost_usd") or 0.0) for _, r in ordered]
    return LoggedBatch(
        obs=obs.float(),
        action_mask=mask,
        action=action,
        behaviour_log_prob=torch.tensor(behaviour, dtype=torch.float32).reshape(m, 1),
        reward=torch.tensor(reward, dtype=torch.float32).reshape(m, 1),
        done=torch.tensor(done, dtype=torch.bool).reshape(m, 1),
        entry_ids=[eid for eid, _ in ordered],
        sessions=len(sessions),
        skipped=dict(skipped),
    )
