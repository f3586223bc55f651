"""The agent set's pending changes, shared by every replica and the retrain job.

``POST /admin/agents`` and ``DELETE /admin/agents/{name}`` record a change here; the next retrain
round applies every change its serving policy lacks (:mod:`policy.agent_set`) and publishes a
policy over the new set. Until then the policy published before the change keeps serving. A change
is written once, atomically: two replicas adding the same name race for one entry and the loser is
told (:class:`AgentChangeConflict`); different names are both kept.

With Redis: hashes ``<prefix>:agents:added`` (name -> ``{"seq", "at", "spec"}``, HSETNX) and
``<prefix>:agents:retired`` (name -> ``{"seq", "at"}``), ``seq`` from ``INCR <prefix>:agents:seq``.
Without: the table ``agent_changes`` of the SQLite experience store (``UNIQUE(kind, name)``).
The calls block (a few milliseconds); the server runs them in a worker thread.
"""

from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError

from contract.errors import DomainError, UserError


class AgentChangeConflict(DomainError):
    """The change was made already (the same name added, or retired, before)."""


class AgentChangesUnavailable(UserError):
    """The shared record of changes cannot be reached."""


@dataclass(frozen=True)
class AgentChangeSet:
    """Every change recorded: ``added`` agent specs (JSON objects) in the order they were added, and
    the ``retired`` names."""

    added: list[dict[str, Any]] = field(default_factory=list)
    retired: list[str] = field(default_factory=list)


class AgentChanges(abc.ABC):
    """The record of changes (see the module docstring)."""

    @abc.abstractmethod
    def add(self, spec: dict[str, Any]) -> None:
        """Record ``spec`` (an agents-file entry, ``name`` in it) as added.

        Raises:
            AgentChangeConflict: an agent of that name was added already.
            AgentChangesUnavailable: the record cannot be reached.
        """

    @abc.abstractmethod
    def retire(self, name: str) -> None:
        """Record ``name`` as retired.

        Raises:
            AgentChangeConflict: it was retired already.
            AgentChangesUnavailable: the record cannot be reached.
        """

    @abc.abstractmethod
    def read(self) -> AgentChangeSet:
        """Every change, oldest first.

        Raises:
            AgentChangesUnavailable: the record cannot be reached.
        """

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the connection."""


def _now() -> str:
    return datetime.now(UTC).isoformat()


class RedisAgentChanges(AgentChanges):
    """The record in Redis, shared by every replica."""

    def __init__(self, url: str, prefix: str) -> None:
        self._r = redis.Redis.from_url(url, decode_responses=True, socket_timeout=5.0)
        self._added, self._retired, self._seq = (f"{prefix}:agents:{k}" for k in ("added", "retired", "seq"))

    def _set(self, key: str, name: str, value: dict[str, Any], what: str) -> None:
        try:
            seq = int(self._r.incr(self._seq))
            if not self._r.hsetnx(key, name, json.dumps({"seq": seq, "at": _now(), **value})):
                raise AgentChangeConflict(f"agent {name!r} was {what} already")
        except (RedisError, OSError) as exc:
            raise AgentChangesUnavailable(f"the agent changes in Redis cannot be reached: {exc}") from None

    def add(self, spec: dict[str, Any]) -> None:
        self._set(self._added, spec["name"], {"spec": spec}, "added")

    def retire(self, name: str) -> None:
        self._set(self._retired, name, {}, "retired")

    def read(self) -> AgentChangeSet:
        try:
            added, retired = self._r.hgetall(self._added), self._r.hgetall(self._retired)
        except (RedisError, OSError) as exc:
            raise AgentChangesUnavailable(f"the agent changes in Redis cannot be reached: {exc}") from None
        adds = sorted((json.loads(v) for v in added.values()), key=lambda e: e["seq"])
        gone = sorted(retired, key=lambda n: json.loads(retired[n])["seq"])
        return AgentChangeSet([e["spec"] for e in adds], gone)

    def close(self) -> None:
        self._r.close()


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS agent_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('add', 'retire')),
    name TEXT NOT NULL,
    spec TEXT,
    at TEXT NOT NULL,
    UNIQUE (kind, name)
)
"""


class SqliteAgentChanges(AgentChanges):
    """The record in the SQLite experience store of a single server (``ROUTER_SQLITE_PATH``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=10.0)
        conn.execute(SQLITE_SCHEMA)
        return conn

    def _insert(self, kind: str, name: str, spec: dict[str, Any] | None, what: str) -> None:
        try:
            with contextlib.closing(self._connect()) as conn, conn:
                conn.execute("INSERT INTO agent_changes (kind, name, spec, at) VALUES (?, ?, ?, ?)",
                             (kind, name, json.dumps(spec) if spec is not None else None, _now()))
        except sqlite3.IntegrityError:
            raise AgentChangeConflict(f"agent {name!r} was {what} already") from None
        except sqlite3.Error as exc:
            raise AgentChangesUnavailable(f"{self.path}: cannot record the agent change: {exc}") from None

    def add(self, spec: dict[str, Any]) -> None:
        self._insert("add", spec["name"], spec, "added")

    def retire(self, name: str) -> None:
        self._insert("retire", name, None, "retired")

    def read(self) -> AgentChangeSet:
        if not self.path.is_file():
            return AgentChangeSet()
        try:
            with contextlib.closing(self._connect()) as conn:
                rows = conn.execute("SELECT kind, name, spec FROM agent_changes ORDER BY seq").fetchall()
        except sqlite3.Error as exc:
            raise AgentChangesUnavailable(f"{self.path}: cannot read the agent changes: {exc}") from None
        return AgentChangeSet([json.loads(spec) for kind, _, spec in rows if kind == "add"],
                              [name for kind, name, _ in rows if kind == "retire"])


def open_agent_changes(redis_url: str | None, *, prefix: str, sqlite_path: str | Path) -> AgentChanges:
    """Redis when ``redis_url`` is set, else the SQLite store's file (as :mod:`experience.backend`)."""
    return RedisAgentChanges(redis_url, prefix) if redis_url else SqliteAgentChanges(sqlite_path)
