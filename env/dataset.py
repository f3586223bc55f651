"""Routing datasets: the on-disk contract, its loader and its seeded splits.

A routing dataset is two files (docs/dataset-format.md):

* prompts, JSON Lines (optionally gzip), one prompt a line::

    {"id": str, "prompt": str, "task": str | null, "session_id": str | null, "turn": int | null,
     "outcomes": {agent_name: {"quality": float in [0, 1], "cost_usd": float | null}}}

* agents, JSON or YAML: ``{"agents": [{"name", "description", "price_per_1m_tokens",
  "cost_per_call_usd", "capacity"}, ...]}`` (a bare list is accepted too). The order of the
  agents file is the action order of every policy trained on the dataset.

Where ``cost_usd`` is null it is derived (:func:`derive_cost_usd`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from contract.errors import DataError
from contract.pricing import DEFAULT_OUTPUT_TOKENS, AgentPrice, call_cost_usd, prompt_tokens

SPLITS = ("train", "val", "test")


class AgentSpec(BaseModel):
    """One specialist agent a router can send a prompt to.

    Attributes:
        name: unique name; the key of ``outcomes`` in the prompts file.
        description: free text, shown at ``GET /v1/agents``.
        price_per_1m_tokens: list price in USD per 1M tokens (input and output), or None.
        cost_per_call_usd: flat USD per call, or None (tool agents). Takes precedence over price.
        capacity: requests the agent serves per env step; None means unbounded.
        prior_quality: what the operator expects its quality to be, in [0, 1] (optional): a
            cold-started policy (``agent-router init``) starts from it, and the learner shrinks the
            agent's estimate towards it until logged feedback says otherwise.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    price_per_1m_tokens: float | None = Field(default=None, ge=0)
    cost_per_call_usd: float | None = Field(default=None, ge=0)
    capacity: int | None = Field(default=None, ge=1)
    prior_quality: float | None = Field(default=None, ge=0.0, le=1.0)

    @property
    def price(self) -> AgentPrice:
        """The price fields, as the observation contract records them."""
        return AgentPrice(price_per_1m_tokens=self.price_per_1m_tokens, cost_per_call_usd=self.cost_per_call_usd)


class AgentsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[AgentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> AgentsFile:
        names = [a.name for a in self.agents]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate agent names: {', '.join(dupes)}")
        return self


class Outcome(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quality: float = Field(ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)


class PromptRecord(BaseModel):
    """One line of a prompts file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1)
    prompt: str = Field(min_length=1)
    task: str | None = None
    session_id: str | None = None
    turn: int | None = Field(default=None, ge=0)
    outcomes: dict[str, Outcome] = Field(min_length=1)


def derive_cost_usd(agent: AgentSpec, prompt: str, output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> float:
    """Cost in USD of one call when the dataset gives none.

    Rule (:func:`contract.pricing.call_cost_usd`): ``cost_per_call_usd`` if set, else
    ``price_per_1m_tokens * (prompt_tokens + output_tokens) / 1e6`` with ``prompt_tokens =
    ceil(len(prompt) / 4)``; 0.0 when the agent has no price at all.
    """
    return call_cost_usd(agent.price, prompt_tokens(prompt), output_tokens)


def open_text(path: Path) -> Any:
    """Open a text file for reading, transparently un-gzipping ``*.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open("r", encoding="utf-8")


def load_agents(path: str | Path) -> list[AgentSpec]:
    """Read an agents file (JSON or YAML, by extension).

    Raises:
        DataError: missing file, unparsable, or not following the contract.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "agents file not found")
    try:
        with path.open(encoding="utf-8") as f:
            raw = yaml.safe_load(f) if path.suffix in (".yaml", ".yml") else json.load(f)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot parse agents file: {exc}") from None
    if isinstance(raw, list):
        raw = {"agents": raw}
    try:
        return AgentsFile.model_validate(raw).agents
    except ValidationError as exc:
        raise DataError(path, _first_error(exc)) from None


def iter_prompt_records(path: str | Path) -> Iterator[tuple[int, PromptRecord]]:
    """Yield ``(line_number, record)`` for each non-blank line of a prompts file.

    Raises:
        DataError: naming the file and line of the first bad line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "prompts file not found")
    try:
        with open_text(path) as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    raw = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(path, f"invalid JSON: {exc.msg}", lineno) from None
                if isinstance(raw, dict) and not raw.get("outcomes"):
                    raise DataError(path, "line has no outcomes", lineno)
                try:
                    yield lineno, PromptRecord.model_validate(raw)
                except ValidationError as exc:
                    raise DataError(path, _first_error(exc), lineno) from None
    except (OSError, EOFError, UnicodeDecodeError) as exc:
        raise DataError(path, f"cannot read prompts file: {exc}") from None


@dataclass
class RoutingDataset:
    """A routing dataset in memory: ``P`` prompts, ``K`` agents.

    Attributes:
        agents: the ``K`` agents, in action order.
        ids, prompts, tasks, session_ids, turns: per-prompt fields, length ``P``.
        quality: ``[P, K]`` float32 in [0, 1], outcome quality of agent k on prompt p.
        cost_usd: ``[P, K]`` float32, USD per call (derived where the file had null).
        source: the prompts file it was read from, for error messages and metadata.
    """

    agents: list[AgentSpec]
    ids: list[str]
    prompts: list[str]
    tasks: list[str | None]
    session_ids: list[str | None]
    turns: list[int | None]
    quality: np.ndarray
    cost_usd: np.ndarray
    source: str = ""
    _agent_index: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._agent_index = {a.name: i for i, a in enumerate(self.agents)}

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def agent_names(self) -> list[str]:
        return [a.name for a in self.agents]

    @property
    def capacities(self) -> list[int | None]:
        return [a.capacity for a in self.agents]

    @property
    def prompt_tokens(self) -> np.ndarray:
        """``[P]`` int64, each prompt's length in tokens (:func:`contract.pricing.prompt_tokens`)."""
        return np.array([prompt_tokens(p) for p in self.prompts], dtype=np.int64)

    def subset(self, index: Sequence[int] | np.ndarray) -> RoutingDataset:
        """The prompts at ``index`` (same agents)."""
        idx = np.asarray(index, dtype=np.int64)
        return RoutingDataset(
            agents=self.agents,
            ids=[self.ids[i] for i in idx],
            prompts=[self.prompts[i] for i in idx],
            tasks=[self.tasks[i] for i in idx],
            session_ids=[self.session_ids[i] for i in idx],
            turns=[self.turns[i] for i in idx],
            quality=self.quality[idx],
            cost_usd=self.cost_usd[idx],
            source=self.source,
        )

    def split(self, name: str, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> RoutingDataset:
        """One of the seeded splits ``train``/``val``/``test`` (see :func:`split_indices`)."""
        return self.subset(split_indices(self, fractions, seed)[name])

    def fingerprint(self) -> str:
        """sha256 over ids, agents and outcomes: identifies the data a policy was trained on."""
        h = hashlib.sha256()
        h.update(json.dumps(self.agent_names).encode())
        h.update("\n".join(self.ids).encode())
        h.update(np.ascontiguousarray(self.quality).tobytes())
        h.update(np.ascontiguousarray(self.cost_usd).tobytes())
        return h.hexdigest()


def load_dataset(prompts_path: str | Path, agents_path: str | Path, limit: int | None = None) -> RoutingDataset:
    """Load and cross-check a prompts file against an agents file.

    Every line must give an outcome for every agent of the agents file, and only for those.

    Args:
        prompts_path: JSON Lines (``.jsonl`` or ``.jsonl.gz``).
        agents_path: JSON or YAML agents file.
        limit: read only the first ``limit`` prompts (tests, smoke runs).

    Raises:
        DataError: naming the file (and line) of the first problem: a line without outcomes,
            an agent missing from or unknown to the agents file, a duplicate id, bad JSON.
    """
    agents = load_agents(agents_path)
    names = [a.name for a in agents]
    name_set = set(names)
    ids: list[str] = []
    prompts: list[str] = []
    tasks: list[str | None] = []
    sessions: list[str | None] = []
    turns: list[int | None] = []
    quality: list[list[float]] = []
    cost: list[list[float]] = []
    seen: set[str] = set()
    for lineno, rec in iter_prompt_records(prompts_path):
        if limit is not None and len(ids) >= limit:
            break
        keys = set(rec.outcomes)
        if keys != name_set:
            unknown = sorted(keys - name_set)
            missing = sorted(name_set - keys)
            parts = []
            if unknown:
                parts.append(f"agents not in {Path(agents_path).name}: {', '.join(unknown)}")
            if missing:
                parts.append(f"no outcome for agents: {', '.join(missing)}")
            raise DataError(prompts_path, "; ".join(parts), lineno)
        if rec.id in seen:
            raise DataError(prompts_path, f"duplicate id {rec.id!r}", lineno)
        seen.add(rec.id)
        ids.append(rec.id)
        prompts.append(rec.prompt)
        tasks.append(rec.task)
        sessions.append(rec.session_id)
        turns.append(rec.turn)
        quality.append([rec.outcomes[n].quality for n in names])
        cost.append(
            [
                o.cost_usd if (o := rec.outcomes[a.name]).cost_usd is not None else derive_cost_usd(a, rec.prompt)
                for a in agents
            ]
        )
    if not ids:
        raise DataError(prompts_path, "no prompts in file")
    return RoutingDataset(
        agents=agents,
        ids=ids,
        prompts=prompts,
        tasks=tasks,
        session_ids=sessions,
        turns=turns,
        quality=np.asarray(quality, dtype=np.float32),
        cost_usd=np.asarray(cost, dtype=np.float32),
        source=str(prompts_path),
    )


def split_indices(
    dataset: RoutingDataset, fractions: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0
) -> dict[str, np.ndarray]:
    """Seeded train/val/test split by prompt.

    Prompts are grouped before splitting: all turns of one ``session_id`` form one group, and
    prompts with identical text (after stripping whitespace) form one group, so no prompt text and
    no session ever lands in two splits. Groups are shuffled with ``numpy.random.default_rng(seed)``
    and cut by cumulative prompt count.

    Returns:
        ``{"train": idx, "val": idx, "test": idx}``, each a sorted int64 array.

    Raises:
        ValueError: fractions not three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    # union-find over "same session" and "same text"
    parent = list(range(len(dataset)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, (text, session) in enumerate(zip(dataset.prompts, dataset.session_ids, strict=True)):
        for key in (("text", text.strip()), ("session", session)) if session else (("text", text.strip()),):
            j = first.setdefault(key, i)
            parent[find(i)] = find(j)
    groups: dict[int, list[int]] = {}
    for i in range(len(dataset)):
        groups.setdefault(find(i), []).append(i)
    order = list(groups.values())
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    n = len(dataset)
    bounds = np.cumsum(fractions)[:2] * n
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    count = 0
    for members in order:
        name = "train" if count < bounds[0] else "val" if count < bounds[1] else "test"
        out[name].extend(members)
        count += len(members)
    return {k: np.sort(np.asarray(v, dtype=np.int64)) for k, v in out.items()}


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else err["msg"]
