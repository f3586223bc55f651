"""Where ``retrain`` reads experience records from, and how it acknowledges them.

Both sources hand back ``(entry_id, record JSON text)`` pairs oldest first (the record is a
:class:`contract.experience.ExperienceRecord`, parsed by the consumer) and order entry ids with
:meth:`ExperienceSource.order_key`, so the job can compare them with the watermark of a checkpoint.

* :class:`RedisGroupSource`: the stream ``<prefix>:experience`` through the consumer group
  ``group``. Entries delivered to an earlier run that did not acknowledge them (it crashed) are
  claimed first (``XAUTOCLAIM``), then new ones are read (``XREADGROUP >``). ``XACK`` happens only
  when the job says so: after the new checkpoint is durable.
* :class:`SqliteSource`: the SQLite store's ``experience`` table after the watermark (``seq``);
  the watermark alone makes each record processed once, so acknowledging is a no-op.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError, ResponseError

from contract.errors import UserError
from experience.layout import EXPERIENCE_STREAM, RECORD_FIELD, SQLITE_EXPERIENCE_QUERY, SQLITE_HISTORY_QUERY

Entry = tuple[str, str]


class SourceError(UserError):
    """The experience log cannot be reached or read."""


class ExperienceSource(abc.ABC):
    """A log of experience records the retraining job consumes."""

    #: ``"redis"`` or ``"sqlite"``
    kind: str
    #: what the watermark is a position in (stream key or database path), kept in checkpoints
    name: str

    @staticmethod
    @abc.abstractmethod
    def order_key(entry_id: str) -> tuple[int, ...]:
        """Sort key of an entry id (ids of one source are totally ordered)."""

    @abc.abstractmethod
    def read(self, after: str | None, max_records: int) -> list[Entry]:
        """Records not yet acknowledged: claimed leftovers of earlier runs and then new ones.

        Entries at or before ``after`` may be among them (a run that crashed after its checkpoint
        was durable but before its acknowledgement); the caller acknowledges them unused.

        Raises:
            SourceError: the log cannot be read.
        """

    @abc.abstractmethod
    def ack(self, entry_ids: list[str]) -> None:
        """Mark entries processed (after the checkpoint that used them is durable).

        Raises:
            SourceError: the acknowledgement was not confirmed (the entries will be read again
                and, being at or before the new watermark, acknowledged then).
        """

    @abc.abstractmethod
    def history(self, upto: str, max_records: int) -> list[Entry]:
        """The newest ``max_records`` entries at or before ``upto`` (acknowledged or not), oldest
        first: what earlier rounds trained on, replayed by the learner.

        Raises:
            SourceError: the log cannot be read.
        """

    def pending(self) -> int:
        """Entries delivered and not acknowledged (0 where the source has no such notion)."""
        return 0

    def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""


class RedisGroupSource(ExperienceSource):
    """The Redis experience stream through a consumer group.

    Args:
        url: Redis URL.
        prefix: key prefix of the server (``ROUTER_REDIS_PREFIX``).
        group: consumer group name; created at the watermark (or the stream's start) if missing.
        consumer: this job's consumer name.
        batch: entries per ``XAUTOCLAIM`` / ``XREADGROUP`` call.
    """

    kind = "redis"

    def __init__(self, url: str, prefix: str, group: str = "retrain", consumer: str = "retrain-1",
                 batch: int = 1000) -> None:
        try:
            self._redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=10.0,
                                               socket_connect_timeout=5.0)
        except ValueError as exc:
            raise SourceError(f"redis url {url!r}: {exc}") from None
        self.stream = self.name = f"{prefix}:{EXPERIENCE_STREAM}"
        self.group, self.consumer, self.batch = group, consumer, batch

    @staticmethod
    def order_key(entry_id: str) -> tuple[int, ...]:
        ms, _, seq = entry_id.partition("-")
        return int(ms), int(seq or 0)

    def _ensure_group(self, after: str | None) -> None:
        try:
            self._redis.xgroup_create(self.stream, self.group, id=after or "0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(self, after: str | None, max_records: int) -> list[Entry]:
        try:
            self._ensure_group(after)
            entries: dict[str, dict[str, Any]] = {}
            start = "0-0"
            while True:  # leftovers of earlier runs, whichever consumer they were delivered to
                reply = self._redis.xautoclaim(self.stream, self.group, self.consumer, min_idle_time=0,
                                               start_id=start, count=self.batch)
                start, claimed = reply[0], reply[1]
                entries.update({eid: fields for eid, fields in claimed if fields})
                if start == "0-0":
                    break
            while len(entries) < max_records:
                reply = self._redis.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                               count=min(self.batch, max_records - len(entries)))
                new = reply[0][1] if reply else []
                if not new:
                    break
                entries.update({eid: fields for eid, fields in new if fields})
        except (RedisError, OSError) as exc:
            raise SourceError(f"cannot read {self.stream} from Redis: {type(exc).__name__}: {exc}") from None
        ordered = sorted(entries, key=self.order_key)
        return [(eid, entries[eid].get(RECORD_FIELD, "")) for eid in ordered]

    def history(self, upto: str, max_records: int) -> list[Entry]:
        """``XREVRANGE`` from ``upto`` back, in pages (entries trimmed by the stream's ``MAXLEN`` are gone)."""
        out: list[Entry] = []
        end = upto
        try:
            while len(out) < max_records:
                count = min(self.batch, max_records - len(out))
                page = self._redis.xrevrange(self.stream, max=end, min="-", count=count)
                if not page:
                    break
                out.extend((eid, fields.get(RECORD_FIELD, "")) for eid, fields in page)
                end = f"({page[-1][0]}"  # exclusive: the next page starts below the last entry read
        except (RedisError, OSError) as exc:
            raise SourceError(f"cannot read {self.stream} from Redis: {type(exc).__name__}: {exc}") from None
        return out[::-1]

    def ack(self, entry_ids: list[str]) -> None:
        try:
            for i in range(0, len(entry_ids), self.batch):
                self._redis.xack(self.stream, self.group, *entry_ids[i:i + self.batch])
        except (RedisError, OSError) as exc:
            raise SourceError(f"XACK on {self.stream} failed: {type(exc).__name__}: {exc}") from None

    def pending(self) -> int:
        try:
            return int(self._redis.xpending(self.stream, self.group)["pending"])
        except ResponseError:  # no group yet
            return 0
        except (RedisError, OSError) as exc:
            raise SourceError(f"XPENDING on {self.stream} failed: {exc}") from None

    def close(self) -> None:
        self._redis.close()


class SqliteSource(ExperienceSource):
    """The SQLite experience store of a single server (``ROUTER_SQLITE_PATH``).

    Raises:
        SourceError: the file does not exist.
    """

    kind = "sqlite"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        if not path.is_file():
            raise SourceError(f"{path}: no SQLite experience store here (ROUTER_SQLITE_PATH)")
        self.path = path
        self.name = str(path.resolve())

    @staticmethod
    def order_key(entry_id: str) -> tuple[int, ...]:
        return (int(entry_id),)

    def read(self, after: str | None, max_records: int) -> list[Entry]:
        """Rows after ``after`` (a ``seq``), read-only, in pages of 1000."""
        out: list[Entry] = []
        try:
            start = int(after) if after is not None else 0
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as conn:
                while len(out) < max_records:
                    page = conn.execute(SQLITE_EXPERIENCE_QUERY, (start, min(1000, max_records - len(out)))).fetchall()
                    if not page:
                        break
                    out.extend((str(seq), record) for seq, record in page)
                    start = page[-1][0]
        except (sqlite3.Error, ValueError) as exc:
            raise SourceError(f"{self.path}: cannot read the experience table: {exc}") from None
        return out

    def history(self, upto: str, max_records: int) -> list[Entry]:
        """Rows at or before ``upto`` (a ``seq``), newest ``max_records``, read-only."""
        try:
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10.0)) as conn:
                rows = conn.execute(SQLITE_HISTORY_QUERY, (int(upto), max_records)).fetchall()
        except (sqlite3.Error, ValueError) as exc:
            raise SourceError(f"{self.path}: cannot read the experience table: {exc}") from None
        return [(str(seq), record) for seq, record in reversed(rows)]

    def ack(self, entry_ids: list[str]) -> None:
        """Nothing to do: the next run reads after the new checkpoint's watermark."""
