"""The agent-router row of ``benchmarks/bandit_stream.py``: the production loop, in process.

A cold start (:func:`training.cold_start.init_policy`, what ``agent-router init`` writes) served by
:class:`router.service.RoutingService` with ``explore: true`` (the server's sampler and its exact
propensity), each decision written as the server writes it (:meth:`RoutingService.decision_context`
joined with the chosen agent's feedback into a :class:`contract.experience.ExperienceRecord`, JSON
as stored), and rounds of :func:`training.retrain.job.run_retrain` (the retrain job: the learner
and the gate, with its watermark and replay) on an in-memory log at the cadence of
``agent-router retrain --every-records N`` (its polls, every :data:`POLL_RECORDS` new records here,
also ask for alarms: an agent whose pending records already do worse than the critic expects runs a
round early); a saved candidate is loaded from its checkpoint
directory and served from the next prompt on, as a hot swap does. What it skips: HTTP, the
embedding model (the harness gives the cached embedding) and Redis or SQLite (the log is a list
behind the same :class:`experience.readers.ExperienceSource` interface).
"""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.bandit_anchors import Context
from contract.experience import ExperienceRecord, Feedback
from env.dataset import load_agents
from experience.agent_changes import AgentChangeConflict, AgentChanges, AgentChangeSet
from experience.readers import Entry, ExperienceSource
from policy.checkpoint import load_checkpoint
from router.service import Decision, RoutingService
from training.cold_start import init_policy
from training.retrain.config import RetrainConfig
from training.retrain.job import round_size, run_retrain

#: new records between two polls of the retrain job (``--every 1s`` at 10 requests a second)
POLL_RECORDS = 10


class MemorySource(ExperienceSource):
    """An experience log in a list, ordered by a sequence number (the SQLite store's semantics)."""

    kind = "sqlite"

    def __init__(self, name: str) -> None:
        self.name = name
        self.records: list[str] = []

    @staticmethod
    def order_key(entry_id: str) -> tuple[int, ...]:
        return (int(entry_id),)

    def read(self, after: str | None, max_records: int) -> list[Entry]:
        start = int(after) if after is not None else 0
        return [(str(i + 1), rec) for i, rec in enumerate(self.records[start:start + max_records], start)]

    def history(self, upto: str, max_records: int) -> list[Entry]:
        end = int(upto)
        first = max(0, end - max_records)
        return [(str(i + 1), rec) for i, rec in enumerate(self.records[first:end], first)]

    def ack(self, entry_ids: list[str]) -> None:
        """Nothing to do: the next round reads after the new checkpoint's watermark."""

    def close(self) -> None:
        """Kept open across rounds (the job closes its source after each)."""


class MemoryAgentChanges(AgentChanges):
    """The record of agent-set changes in lists (what ``POST /admin/agents`` and
    ``DELETE /admin/agents/{name}`` write to Redis or SQLite)."""

    def __init__(self) -> None:
        self.changes = AgentChangeSet()

    def add(self, spec: dict[str, Any]) -> None:
        if spec["name"] in [a["name"] for a in self.changes.added]:
            raise AgentChangeConflict(f"agent {spec['name']!r} was added already")
        self.changes.added.append(spec)

    def retire(self, name: str) -> None:
        if name in self.changes.retired:
            raise AgentChangeConflict(f"agent {name!r} was retired already")
        self.changes.retired.append(name)

    def read(self) -> AgentChangeSet:
        return AgentChangeSet(list(self.changes.added), list(self.changes.retired))


class AgentRouterLoop:
    """``StreamLearner`` of the production loop (see the module docstring).

    Args:
        agents_path: the agents file ``init`` reads.
        cost_weight: reward per USD.
        seed: the sampler's seed.
        workdir: checkpoints go under ``workdir/checkpoints``.
        embed_dim: the embeddings' width.
        settings: ``RetrainConfig`` fields beside the defaults (``min_records`` is the round size).
        agent_names: the harness's agents, in its action order (None: the agents file's order);
            ``act`` answers and ``learn_outcome`` takes indices in it.
        serving: of those, the agents in service at the start (None: all): the cold start knows only
            these; the others join through :meth:`change_agents`, as an operator adds them.
        cost_weight_max: serve each request's own ``Context.cost_weight`` up to this (``agent-router
            init --cost-weight-max``); None: ``cost_weight`` for every request.
    """

    name = "agent-router"

    def __init__(self, agents_path: str, cost_weight: float, seed: int, workdir: Path, embed_dim: int = 384,
                 settings: dict[str, Any] | None = None, agent_names: list[str] | None = None,
                 serving: list[str] | None = None, cost_weight_max: float | None = None) -> None:
        self.root = Path(workdir) / "checkpoints"
        shutil.rmtree(self.root, ignore_errors=True)  # a scratch directory: an earlier run's versions would be served
        self.specs = {a.name: a.model_dump() for a in load_agents(agents_path)}
        self.names = list(agent_names) if agent_names is not None else list(self.specs)
        if serving is not None:  # the agents file the operator started with
            first = Path(workdir) / "agents-at-start.json"
            first.parent.mkdir(parents=True, exist_ok=True)
            first.write_text(json.dumps([self.specs[n] for n in serving]))
            agents_path = str(first)
        init_policy(agents_path, self.root, embed_dim=embed_dim, cost_weight=cost_weight, seed=seed,
                    cost_weight_max=cost_weight_max)
        self.changes = MemoryAgentChanges()
        self.down: set[str] = set()  # retired agents, marked down until a round retires them
        self.changed = False
        self.source = MemorySource(f"memory:{workdir}")
        self.cfg = RetrainConfig.model_validate({"checkpoint_root": self.root, "publish": False, "seed": seed,
                                                 "min_records": 200, **(settings or {})})
        self.seed = seed
        self.service = RoutingService(load_checkpoint(self.root), embedder=None, seed=seed)  # type: ignore[arg-type]
        self.pending: Decision | None = None
        self.new, self.learned = 0, 0
        self.rounds: list[dict[str, Any]] = []

    def act(self, ctx: Context) -> tuple[int, float]:
        self.pending = self.service.route(ctx.prompt, explore=True, embedding=ctx.embedding, down=self.down,
                                          cost_weight=ctx.cost_weight)
        return self.names.index(self.pending.agent), self.pending.propensity

    def change_agents(self, allowed: Any) -> None:
        """The harness's agent set changed (``allowed``: ``[K]`` bool in its order): agents newly
        allowed are added (``POST /admin/agents`` with their agents-file entry), agents no longer
        allowed are retired (``DELETE /admin/agents/{name}``) and marked down at once, as an
        operator does; the next round applies the change."""
        served = self.service.agents
        for name, ok in zip(self.names, allowed, strict=True):
            if ok and name not in served:
                self.changes.add(self.specs[name])
                self.changed = True
            elif not ok and name in served and name not in self.down:
                self.changes.retire(name)
                self.down.add(name)
                self.changed = True

    def learn(self, ctx: Context, action: int, reward: float, propensity: float) -> None:
        raise NotImplementedError("the loop's feedback is an outcome: learn_outcome")

    def learn_outcome(self, ctx: Context, action: int, quality: float, cost_usd: float, propensity: float) -> None:
        decision = self.pending
        assert decision is not None and decision.agent == self.names[action]
        context = self.service.decision_context(decision, ctx.prompt, session_id=None)
        feedback = Feedback(quality=min(1.0, max(0.0, quality)), cost_usd=cost_usd,
                            feedback_at=datetime.now(UTC).isoformat())
        self.source.records.append(json.dumps(ExperienceRecord.join(context, feedback).to_json_dict()))
        self.new += 1
        # what --every-records polls for; each poll also asks for alarms
        polled = not self.new % POLL_RECORDS and self.new >= self.cfg.change_min_records
        if self.new < round_size(self.cfg, self.learned) and not self.changed and not polled:
            return
        result = run_retrain(self.cfg, source=self.source, agent_changes=self.changes)
        if result.status == "too_few":
            return
        self.new, self.changed = 0, False
        self.rounds.append({"records": len(self.source.records), "status": result.status,
                            "reason": result.gate.get("reason"), **result.train})
        if result.status == "saved":
            self.service = RoutingService(load_checkpoint(result.checkpoint), embedder=None,  # type: ignore[arg-type]
                                          seed=self.seed + len(self.rounds))
            self.learned = self.service.policy.meta.exploration.records


def make_learner(agents_path: str, dataset: Any, cost_weight: float, seed: int, workdir: Path,
                 serving: list[str] | None = None, cost_weight_max: float | None = None,
                 settings: dict[str, Any] | None = None) -> AgentRouterLoop:
    """The harness's factory (``dataset`` is not read but for its agents' names: the loop learns
    only from its feedback); ``serving``: the agents in service at the start (None: all);
    ``cost_weight_max``, ``settings``: see :class:`AgentRouterLoop`."""
    return AgentRouterLoop(agents_path, cost_weight, seed, workdir, agent_names=list(dataset.agent_names),
                           serving=serving, cost_weight_max=cost_weight_max, settings=settings)
