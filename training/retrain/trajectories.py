"""Experience records -> per-session trajectories, as flat tensors the PPO update can use.

A session is the records sharing a ``session_id`` (a record without one is a session of its
own), ordered by ``created_at``. Sessions are laid end to end in one time axis ``[M]``; ``done``
marks the last step of each, so GAE (:func:`training.gae.generalized_advantage_estimate`) never
carries an advantage across two sessions, and the end of a session is terminal (the conversation
is over: nothing is bootstrapped after it).
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import torch

from contract.experience import ExperienceRecord, parse_record
from policy.artefact import Policy


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
        propensity: ``[M, 1]`` float32, the probability the action was chosen with (1 for an
            argmax; ``exp(log_prob)`` for version-1 records without one): off-policy weights.
        reward: ``[M, 1]`` float32, ``quality - cost_weight * cost_usd`` (cost missing: 0).
        done: ``[M, 1]`` bool, last step of its session (also ``terminated``).
        entry_ids: ``[M]`` entry ids, in the batch's order.
        sessions: ``S``.
        skipped: reasons -> count of records left out (they are still acknowledged).
        created_at: ``[M]`` float64, each decision's time, POSIX seconds (None: not known).
        quality: ``[M, 1]`` float32, the feedback's quality (None: not known).
        cost_usd: ``[M, 1]`` float32 USD, the feedback's cost (NaN where not reported; None: not known).
    """

    obs: torch.Tensor
    action_mask: torch.Tensor
    action: torch.Tensor
    behaviour_log_prob: torch.Tensor
    propensity: torch.Tensor
    reward: torch.Tensor
    done: torch.Tensor
    entry_ids: list[str]
    sessions: int
    skipped: dict[str, int] = field(default_factory=dict)
    created_at: torch.Tensor | None = None
    quality: torch.Tensor | None = None
    cost_usd: torch.Tensor | None = None

    @property
    def outcome(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(quality, cost_usd)``, what a preference critic is fitted on (None: not known)."""
        return None if self.quality is None or self.cost_usd is None else (self.quality, self.cost_usd)

    def __len__(self) -> int:
        return len(self.entry_ids)


#: The skip reason of a proxied call's record that has no quality (yet): usable for cost and latency only.
NO_QUALITY = "no quality: a proxied call's cost and latency only"


def _check(record: ExperienceRecord, policy: Policy) -> tuple[str | None, np.ndarray | None]:
    """``(why, None)`` when ``record`` cannot be used with ``policy``, else ``(None, its decoded
    [E] float32 embedding)``."""
    k, layout = len(policy.agents), policy.layout
    if record.quality is None:
        return NO_QUALITY, None
    if not record.action < k or record.agent != policy.agents[record.action]:
        return "agent not in the serving policy's action order", None
    if len(record.load) != len(record.action_mask) or len(record.load) > k:
        return "load or action_mask of another agent count", None
    if not record.action_mask[record.action]:
        return "chosen agent masked", None
    try:
        vector = record.embedding_vector()
    except ValueError:
        return "malformed record", None
    if vector.shape[0] != layout.embed_dim:
        return "embedding of another width", None
    if layout.agent_prices is not None and record.prompt_tokens is None:
        return "no prompt length (a record from before schema version 3)", None
    return None, vector


def _padded(values: list[Any], k: int, fill: Any) -> list[Any]:
    """``values`` extended with ``fill`` to length ``k``."""
    return list(values) + [fill] * (k - len(values))


def merged_skipped(*batches: LoggedBatch) -> dict[str, int]:
    """Reasons -> records left out, summed over ``batches`` (a round's training and held-out parts)."""
    out: dict[str, int] = {}
    for batch in batches:
        for reason, count in batch.skipped.items():
            out[reason] = out.get(reason, 0) + count
    return out


def session_key(record: ExperienceRecord) -> str:
    """The session a record belongs to: its ``session_id``, else its own decision."""
    return record.session_id or f"decision:{record.decision_id}"


def held_out(key: str, fraction: float) -> bool:
    """Whether the session ``key`` is in the held-out share ``fraction`` of sessions: the first 8
    bytes of its SHA-256, as a fraction of 2^64, below ``fraction`` (the same answer in every run)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") < fraction * 2.0**64


def split_held_out(entries: list[tuple[str, Any]], fraction: float) -> tuple[list[tuple[str, Any]],
                                                                              list[tuple[str, Any]]]:
    """``(train, held)`` of ``entries``: whole sessions are held out by :func:`held_out` (so no
    trajectory is cut). Parsed records are passed on parsed (:func:`build_batch` takes them as
    they are); those that do not parse go to ``train``, where they are counted as skipped."""
    train, held = [], []
    for entry_id, raw in entries:
        try:
            record = parse_record(raw)
        except ValueError:
            train.append((entry_id, raw))
            continue
        (held if held_out(session_key(record), fraction) else train).append((entry_id, record))
    return train, held


def build_batch(entries: list[tuple[str, Any]], policy: Policy, cost_weight: float) -> LoggedBatch:
    """Rebuild per-session trajectories from ``entries`` (``(entry_id, stored record)``).

    Args:
        entries: experience records as stored (JSON objects, parsed by
            :func:`contract.experience.parse_record`) or already parsed, any order.
        policy: the policy being retrained (its agents, obs layout and embedding width).
        cost_weight: reward per USD (a record with its own ``cost_weight`` uses that).

    Returns:
        :class:`LoggedBatch` on CPU; records that do not parse or do not fit ``policy`` are counted
        in ``skipped``.
    """
    skipped: dict[str, int] = defaultdict(int)
    sessions: dict[str, list[tuple[datetime, str, ExperienceRecord, np.ndarray]]] = defaultdict(list)
    for entry_id, raw in entries:
        try:
            record = parse_record(raw)
        except ValueError:
            skipped["malformed record"] += 1
            continue
        reason, vector = _check(record, policy)
        if vector is None:
            skipped[str(reason)] += 1
            continue
        key = session_key(record)
        sessions[key].append((datetime.fromisoformat(record.created_at), entry_id, record, vector))
    ordered: list[tuple[str, ExperienceRecord]] = []
    vectors: list[np.ndarray] = []
    done: list[bool] = []
    created: list[float] = []
    for steps in sessions.values():
        steps.sort(key=lambda s: (s[0], s[1]))
        ordered.extend((eid, rec) for _, eid, rec, _ in steps)
        created.extend(at.timestamp() for at, *_ in steps)
        vectors.extend(vec for *_, vec in steps)
        done.extend([False] * (len(steps) - 1) + [True])
    m, k = len(ordered), len(policy.agents)
    emb = np.stack(vectors) if m else np.zeros((0, policy.layout.embed_dim), dtype=np.float32)
    # a record logged before agents were added holds a prefix of the action order: the agents it
    # did not know were neither loaded nor allowed (policy.agent_set appends, never reorders)
    load = np.array([_padded(r.load, k, 0.0) for _, r in ordered], dtype=np.float32).reshape(m, k)
    preference = None
    if policy.layout.cost_preference:
        preference = torch.tensor([policy.layout.default_cost_weight if r.cost_weight is None else r.cost_weight
                                   for _, r in ordered], dtype=torch.float32)
    tokens = (torch.tensor([r.prompt_tokens for _, r in ordered], dtype=torch.long)
              if policy.layout.agent_prices is not None else None)
    obs = policy.build_obs(torch.as_tensor(emb, dtype=torch.float32), torch.from_numpy(load), cost_weight=preference,
                           tokens=tokens)
    mask = torch.tensor([_padded(r.action_mask, k, False) for _, r in ordered], dtype=torch.bool).reshape(m, 1, k)
    action = torch.tensor([r.action for _, r in ordered], dtype=torch.long).reshape(m, 1)
    behaviour = [r.behaviour_log_prob() for _, r in ordered]
    # a policy trained for every trade-off is rewarded at each request's own preference
    reward = [r.quality - (cost_weight if r.cost_weight is None else r.cost_weight) * (r.cost_usd or 0.0)
              for _, r in ordered]
    return LoggedBatch(
        obs=obs.float(),
        action_mask=mask,
        action=action,
        behaviour_log_prob=torch.tensor(behaviour, dtype=torch.float32).reshape(m, 1),
        propensity=torch.tensor([r.propensity if r.propensity is not None else math.exp(r.log_prob)
                                 for _, r in ordered], dtype=torch.float32).reshape(m, 1),
        reward=torch.tensor(reward, dtype=torch.float32).reshape(m, 1),
        done=torch.tensor(done, dtype=torch.bool).reshape(m, 1),
        entry_ids=[eid for eid, _ in ordered],
        sessions=len(sessions),
        skipped=dict(skipped),
        created_at=torch.tensor(created, dtype=torch.float64),
        quality=torch.tensor([r.quality for _, r in ordered], dtype=torch.float32).reshape(m, 1),
        cost_usd=torch.tensor([math.nan if r.cost_usd is None else r.cost_usd for _, r in ordered],
                              dtype=torch.float32).reshape(m, 1),
    )
