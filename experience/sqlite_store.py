"""Experience log in one SQLite file (the default when no Redis is configured).

Tables::

    decisions(decision_id TEXT PRIMARY KEY, context TEXT, created_at REAL, expires_at REAL)
    experience(seq INTEGER PRIMARY KEY AUTOINCREMENT, decision_id TEXT UNIQUE, record TEXT,
               created_at REAL)

``experience.decision_id`` is the record's key (:func:`~contract.experience.record_key`): the
decision id, suffixed ``#proxy`` for the proxy's call record. Times are Unix seconds. The file is
in WAL mode; feedback commits with ``synchronous=FULL``, so an acknowledged record is on disk, and
decisions as ``decision_sync`` says. Writes are group-committed. Several processes may share it
(writers wait up to the busy timeout). Entry ids of
:meth:`SqliteExperienceStore.read_experience` are ``str(seq)``.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from contract.experience import DecisionContext, ExperienceRecord, Feedback, record_key
from experience.base import (
    DuplicateFeedback,
    ExperienceStore,
    UnknownDecision,
    dump_json,
)
from experience.durable_sqlite import DurableSqlite
from experience.layout import SQLITE_EXPERIENCE_QUERY

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS decisions (decision_id TEXT PRIMARY KEY, context TEXT NOT NULL, "
    "created_at REAL NOT NULL, expires_at REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS decisions_expires_at ON decisions (expires_at)",
    "CREATE TABLE IF NOT EXISTS experience (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "decision_id TEXT NOT NULL UNIQUE, record TEXT NOT NULL, created_at REAL NOT NULL)",
)

PURGE_EVERY_S = 60.0


class SqliteExperienceStore(ExperienceStore):
    """:class:`ExperienceStore` on a SQLite file.

    Opening creates the parent directories, the file and the tables (blocking; call it from a
    thread in async code).

    Args:
        path: database file.
        decision_ttl_s: seconds a decision waits for feedback; expired ones are purged now and
            then and answer :class:`UnknownDecision`.
        busy_timeout_s: how long a write waits for another process's write lock.
        decision_sync: ``"full"``: a decision context is fsynced before :meth:`put_decision`
            returns; ``"normal"``: it survives a crash of the process at once and a crash of the
            machine once the next feedback's fsync carries it
            (:meth:`~experience.durable_sqlite.DurableSqlite.write`). Feedback is always
            fsynced.

    Raises:
        StoreUnavailable: the file cannot be created or opened as a database.
    """

    def __init__(self, path: str | Path, decision_ttl_s: int = 86400,
                 busy_timeout_s: float = 10.0, decision_sync: str = "full") -> None:
        if decision_sync not in ("full", "normal"):
            raise ValueError(f"decision_sync must be full or normal, not {decision_sync!r}")
        self.path = Path(path)
        self.decision_ttl_s = decision_ttl_s
        self.decision_sync = decision_sync
        self._last_purge = 0.0
        self._db = DurableSqlite(self.path, _SCHEMA, "experience database", busy_timeout_s)

    async def _run(self, what: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._db.run(what, fn)

    async def put_decision(self, context: DecisionContext) -> None:
        """Insert the context (and purge expired decisions about once a minute), group-committed
        with the other writes of the moment (:meth:`DurableSqlite.write`)."""
        decision_id = context.decision_id
        payload = dump_json(context)

        def write(conn: sqlite3.Connection) -> None:
            now = time.time()
            if now - self._last_purge >= PURGE_EVERY_S:
                conn.execute("DELETE FROM decisions WHERE expires_at <= ?", (now,))
            conn.execute(
                "INSERT INTO decisions (decision_id, context, created_at, expires_at) "
                "VALUES (?, ?, ?, ?)",
                (decision_id, payload, now, now + self.decision_ttl_s),
            )
            if now - self._last_purge >= PURGE_EVERY_S:
                self._last_purge = now

        try:
            await self._db.write("put_decision", write, durable=self.decision_sync == "full")
        except sqlite3.IntegrityError as exc:
            raise ValueError(f"decision {decision_id!r} already exists") from exc

    async def record_feedback(self, decision_id: str, feedback: Feedback) -> ExperienceRecord:
        """Check and insert under one savepoint of a group commit (:meth:`DurableSqlite.write`): the
        record is on disk when this returns."""

        key = record_key(decision_id, feedback.source)

        def write(conn: sqlite3.Connection) -> ExperienceRecord:
            now = time.time()
            row = conn.execute(
                "SELECT context FROM decisions WHERE decision_id = ? AND expires_at > ?",
                (decision_id, now),
            ).fetchone()
            if row is None:
                raise UnknownDecision(decision_id)
            done = conn.execute(
                "SELECT 1 FROM experience WHERE decision_id = ?", (key,)
            ).fetchone()
            if done is not None:
                raise DuplicateFeedback(decision_id)
            record = ExperienceRecord.join(json.loads(row[0]), feedback)
            conn.execute(
                "INSERT INTO experience (decision_id, record, created_at) VALUES (?, ?, ?)",
                (key, dump_json(record), now),
            )
            return record

        try:
            return await self._db.write("record_feedback", write)
        except sqlite3.IntegrityError as exc:  # a concurrent writer won the UNIQUE race
            raise DuplicateFeedback(decision_id) from exc

    async def read_experience(
        self, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """Rows of ``experience`` with ``seq > int(after)``, by ``seq``."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if after is not None and not after.isdigit():
            raise ValueError(f"{after!r} is not an experience id of this store (digits)")
        start = int(after) if after is not None else 0

        def read(conn: sqlite3.Connection) -> list[tuple[str, dict[str, Any]]]:
            rows = conn.execute(SQLITE_EXPERIENCE_QUERY, (start, count)).fetchall()
            return [(str(seq), json.loads(record)) for seq, record in rows]

        return await self._run("read_experience", read)

    async def ping(self) -> None:
        """Run a trivial query."""
        await self._run("ping", lambda conn: conn.execute("SELECT 1").fetchone())

    async def writable(self) -> str:
        await self.ping()
        return "sqlite"

    async def close(self) -> None:
        """Close the connection (waits for a running call)."""
        await self._db.close()
