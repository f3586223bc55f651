"""One durable SQLite connection shared by the SQLite experience store and the Redis outbox.

WAL journal, ``synchronous = FULL`` (a committed write survives power loss), autocommit mode with
explicit ``BEGIN IMMEDIATE`` transactions, and a lock so that worker threads take turns.

**Group commit** (:meth:`DurableSqlite.write`): the writes that arrive while a commit is on its way
to disk wait for it, then go together in one transaction, one ``COMMIT`` and so one fsync for all
of them. A write that arrives when none is running starts at once (nothing waits for a window), so
a lone request pays one fsync as before; under load the groups grow by themselves. Each write runs
under its own ``SAVEPOINT``: one that raises is rolled back alone, and its caller gets the error.
A caller is answered only after the ``COMMIT`` returned, so "answered" still means "on disk".

A write may be **crash-durable only** (``durable=False``): a group of such writes commits with
``synchronous = NORMAL``, which in WAL mode writes the transaction to the log without an fsync. It
survives a crash of the process, not of the machine, until the next durable commit (or WAL
checkpoint) fsyncs the log, which then carries it too. The SQLite store writes decision contexts so
(``ROUTER_SQLITE_DECISION_SYNC=normal``): the fsync leaves the routing path, and a decision lost to
a power cut only makes its feedback answer 404. Feedback, which the client is told is durable
(202), always commits with ``synchronous = FULL``.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from experience.base import StoreUnavailable

T = TypeVar("T")

#: Most writes committed in one transaction.
MAX_GROUP = 256


@dataclass
class _Write:
    op: str
    fn: Callable[[sqlite3.Connection], Any]
    future: asyncio.Future[Any]
    durable: bool = True


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
        self._pending: list[_Write] = []
        self._committing = False
        self._committer: asyncio.Task[None] | None = None
        #: commits made by :meth:`write`, and the writes they carried (group sizes: writes / commits)
        self.commits = 0
        self.writes = 0
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

    async def write(self, op: str, fn: Callable[[sqlite3.Connection], T], durable: bool = True) -> T:
        """Run ``fn(conn)`` in a transaction shared with the writes queued meanwhile (group commit,
        module docstring) and return its result once the transaction is committed.

        ``fn`` must not begin or commit a transaction itself. ``durable=False``: the commit need not
        be fsynced when no durable write shares it (module docstring).

        Raises:
            StoreUnavailable: the connection is closed, or SQLite failed (then none of the group's
                writes was committed).
            sqlite3.IntegrityError, and whatever ``fn`` raises: ``fn``'s own error, its changes
                rolled back (the others of the group are committed).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._pending.append(_Write(op, fn, future, durable))
        if not self._committing:
            self._committing = True
            self._committer = loop.create_task(self._commit_loop())
        return await future

    async def _commit_loop(self) -> None:
        try:
            while self._pending:
                group, self._pending = self._pending[:MAX_GROUP], self._pending[MAX_GROUP:]
                try:
                    results = await asyncio.to_thread(self._commit, group)
                except BaseException as exc:  # the thread could not even run: fail the group
                    results = [(False, StoreUnavailable(f"{self.what} write failed: {exc}"))] * len(group)
                for item, (ok, value) in zip(group, results, strict=True):
                    if item.future.done():  # its caller was cancelled
                        continue
                    if ok:
                        item.future.set_result(value)
                    else:
                        item.future.set_exception(value)
        finally:
            self._committing = False

    def _commit(self, group: list[_Write]) -> list[tuple[bool, Any]]:
        with self._lock:
            conn = self._conn
            if conn is None:
                return [(False, StoreUnavailable(f"{self.path}: the {self.what} is closed"))] * len(group)
            results: list[tuple[bool, Any]] = []
            try:
                sync = "FULL" if any(item.durable for item in group) else "NORMAL"
                conn.execute(f"PRAGMA synchronous = {sync}")
                conn.execute("BEGIN IMMEDIATE")
                for item in group:
                    conn.execute("SAVEPOINT one_write")
                    try:
                        value = item.fn(conn)
                    except Exception as exc:
                        conn.execute("ROLLBACK TO one_write")
                        conn.execute("RELEASE one_write")
                        if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
                            exc = StoreUnavailable(f"{self.what} {item.op} failed: {exc}")
                        results.append((False, exc))
                        continue
                    conn.execute("RELEASE one_write")
                    results.append((True, value))
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                failure = StoreUnavailable(f"{self.what} commit of {len(group)} writes failed: {exc}")
                return [(False, failure)] * len(group)
            finally:
                if not conn.in_transaction:  # every other use of the connection stays FULL
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA synchronous = FULL")
            self.commits += 1
            self.writes += len(group)
            return results

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
