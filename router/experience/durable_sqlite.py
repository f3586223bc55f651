"""One durable SQLite connection shared by the SQLite experience store and the Redis outbox.

WAL journal, ``synchronous = FULL`` (a committed write survives power loss), autocommit mode with
explicit ``BEGIN IMMEDIATE`` transactions, and a lock so that worker threads take turns.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from router.experience.base import StoreUnavailable

T = TypeVar("T")


class DurableSqlite:
    """A SQLite file opened for durable writes, used from worker threads.

    Opening is blocking (call it from a thread in async code).

    Args:
        path: database file (parent directories are created).
        schema: ``CREATE ... IF NOT EXISTS`` statements, run in one transaction.
        what: what the file is, for messages (``"outbox"``: "cannot open the outbox: ...").
        busy_timeout_s: how long a write waits for another process's write lock, in seconds.

    Raises:
        StoreUnavailable: the file cannot be created or opened as a database.
    """

    def __init__(self, path: str | Path, schema: Iterable[str], what: str, busy_timeout_s: float = 10.0) -> None:
        self.path = Path(path)
        self.what = what
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"{self.path}: cannot open the {what}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            with transaction(conn):
                for statement in schema:
                    conn.execute(statement)
        except sqlite3.Error as exc:
            conn.close()
            raise StoreUnavailable(f"{self.path}: cannot open the {what}: {exc}") from exc
        self._conn = conn

    async def run(self, op: str, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(conn)`` in a worker thread, holding the lock.

        Raises:
            StoreUnavailable: the connection is closed, or SQLite failed (other than an integrity error).
            sqlite3.IntegrityError: passed through (callers map it to their own errors).
        """

        def locked() -> T:
            with self._lock:
                if self._conn is None:
                    raise StoreUnavailable(f"{self.path}: the {self.what} is closed")
                try:
                    return fn(self._conn)
                except sqlite3.IntegrityError:
                    raise
                except sqlite3.Error as exc:
                    raise StoreUnavailable(f"{self.what} {op} failed: {exc}") from exc

        return await asyncio.to_thread(locked)

    async def close(self) -> None:
        """Close the connection (waits for a running call)."""

        def close() -> None:
            with self._lock:
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        await asyncio.to_thread(close)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block or the commit raises."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
