"""Durable local outbox of the Redis experience store: what Redis could not take, kept on disk.

When Redis is unreachable (connection refused, timeout, a Redis still loading its data), the
Redis store appends decision contexts and experience records here instead, answers the request,
and a background task drains the outbox to the Redis streams, oldest first, once Redis is back
(see :class:`experience.redis_store.RedisExperienceStore`).

One SQLite file (``ROUTER_OUTBOX_PATH``) in WAL mode with ``synchronous=FULL``: a committed append
has been fsynced, so it survives a crash of the process or of the machine. Table::

    outbox(seq INTEGER PRIMARY KEY AUTOINCREMENT, prefix TEXT, kind TEXT, decision_id TEXT,
           payload TEXT, created_at REAL, expires_at REAL)
    UNIQUE (prefix, kind, decision_id)

``kind`` is ``decision`` (payload: the context JSON) or ``experience`` (payload: the record JSON);
``prefix`` is the Redis key prefix, so servers of different prefixes may share one file; times
are Unix seconds; ``expires_at`` of a decision is when it stops accepting feedback. Rows are
deleted once Redis has them. Several processes may share the file (writers wait up to the busy
timeout); the uniqueness constraint makes the feedback check atomic across them.

Feedback for a decision still in the outbox is validated here: unknown when the decision expired
(:class:`UnknownDecision`), :class:`DuplicateFeedback` when its experience record is already in
the outbox.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from contract.experience import ExperienceRecord
from experience.base import DuplicateFeedback, UnknownDecision, dump_json
from experience.durable_sqlite import DurableSqlite, transaction

T = TypeVar("T")

Kind = Literal["decision", "experience"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, prefix TEXT NOT NULL, "
    "kind TEXT NOT NULL CHECK (kind IN ('decision', 'experience')), decision_id TEXT NOT NULL, "
    "payload TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL)",
    "CREATE UNIQUE INDEX IF NOT EXISTS outbox_record ON outbox (prefix, kind, decision_id)",
    "CREATE INDEX IF NOT EXISTS outbox_prefix_seq ON outbox (prefix, seq)",
)


@dataclass(frozen=True)
class OutboxRow:
    """One pending record.

    Attributes:
        seq: position in the outbox (append order).
        kind: ``"decision"`` or ``"experience"``.
        decision_id: the decision it belongs to; for the proxy's call record, its
            :func:`~contract.experience.record_key`.
        payload: the context JSON (decision) or record JSON (experience).
        expires_at: Unix seconds; for a decision, when it stops accepting feedback.
    """

    seq: int
    kind: Kind
    decision_id: str
    payload: str
    expires_at: float


class Outbox:
    """The outbox file of one Redis key prefix. Opening is blocking (call it from a thread).

    Args:
        path: SQLite file (parent directories are created).
        prefix: Redis key prefix whose records this outbox holds.
        busy_timeout_s: how long a write waits for another process's write lock.

    Raises:
        StoreUnavailable: the file cannot be created or opened as a database.
    """

    def __init__(self, path: str | Path, prefix: str, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.prefix = prefix
        self._db = DurableSqlite(self.path, _SCHEMA, "outbox", busy_timeout_s)

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(what, fn)

    async def append_decision(self, decision_id: str, context_json: str, ttl_s: float) -> None:
        """Durably append a decision context that accepts feedback for ``ttl_s`` seconds.

        Appending the same decision twice keeps the first.

        Raises:
            StoreUnavailable: the write was not committed.
        """

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            with transaction(conn):
                conn.execute(
                    "INSERT OR IGNORE INTO outbox (prefix, kind, decision_id, payload, created_at, expires_at) "
                    "VALUES (?, 'decision', ?, ?, ?, ?)",
                    (self.prefix, decision_id, context_json, now, now + ttl_s),
                )

        await self._run("append_decision", write)

    async def holds(self, decision_id: str) -> bool:
        """Whether the outbox has any record (decision or experience) of ``decision_id``."""

        def read(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT 1 FROM outbox WHERE prefix = ? AND decision_id = ? LIMIT 1",
                (self.prefix, decision_id),
            ).fetchone()
            return row is not None

        return await self._run("holds", read)

    async def record_feedback(self, decision_id: str, fields: dict[str, Any],
                              key: str | None = None) -> ExperienceRecord | None:
        """Validate and durably append the experience record of a decision held here.

        Args:
            decision_id: the decision.
            fields: feedback fields, ``feedback_at`` included.
            key: the record's key (:func:`~contract.experience.record_key`; None: ``decision_id``),
                kept in the ``decision_id`` column of its row.

        Returns:
            The record appended, or None when the outbox holds neither the decision nor its
            feedback (the caller asks Redis).

        Raises:
            DuplicateFeedback: the outbox already holds the decision's experience record.
            UnknownDecision: the decision is held here but expired.
            StoreUnavailable: the write was not committed.
            ValueError: a feedback field clashes with the context, or the record is not an
                :class:`~contract.experience.ExperienceRecord`.
        """

        key = decision_id if key is None else key

        def write(conn: sqlite3.Connection) -> ExperienceRecord | None:
            now = time.time()
            with transaction(conn):
                rows = {(kind, row_id): (payload, expires_at) for kind, row_id, payload, expires_at in conn.execute(
                    "SELECT kind, decision_id, payload, expires_at FROM outbox WHERE prefix = ? "
                    "AND decision_id IN (?, ?)", (self.prefix, decision_id, key),
                )}
                if ("experience", key) in rows:
                    raise DuplicateFeedback(decision_id)
                if ("decision", decision_id) not in rows:
                    return None
                payload, expires_at = rows[("decision", decision_id)]
                if expires_at <= now:
                    raise UnknownDecision(decision_id)
                record = ExperienceRecord.join(json.loads(payload), fields)
                conn.execute(
                    "INSERT INTO outbox (prefix, kind, decision_id, payload, created_at, expires_at) "
                    "VALUES (?, 'experience', ?, ?, ?, ?)",
                    (self.prefix, key, dump_json(record), now, expires_at),
                )
            return record

        try:
            return await self._run("record_feedback", write)
        except sqlite3.IntegrityError as exc:  # the UNIQUE index: another process won the race
            raise DuplicateFeedback(decision_id) from exc

    async def peek(self, limit: int = 100) -> list[OutboxRow]:
        """The ``limit`` oldest pending rows of this prefix, in append order."""

        def read(conn: sqlite3.Connection) -> list[OutboxRow]:
            rows = conn.execute(
                "SELECT seq, kind, decision_id, payload, expires_at FROM outbox WHERE prefix = ? "
                "ORDER BY seq LIMIT ?",
                (self.prefix, limit),
            ).fetchall()
            return [OutboxRow(*row) for row in rows]

        return await self._run("peek", read)

    async def delete(self, seqs: list[int]) -> None:
        """Remove rows that Redis now holds."""
        if not seqs:
            return

        def write(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.executemany("DELETE FROM outbox WHERE seq = ?", [(s,) for s in seqs])

        await self._run("delete", write)

    async def count(self) -> int:
        """Pending rows of this prefix."""
        return await self._run(
            "count",
            lambda conn: conn.execute("SELECT COUNT(*) FROM outbox WHERE prefix = ?", (self.prefix,)).fetchone()[0],
        )

    async def close(self) -> None:
        """Close the connection (waits for a running call)."""
        await self._db.close()
