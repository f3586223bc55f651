"""Experience log in Redis (redis-py asyncio): keys with TTL for decisions, streams for the log.

Keys, all under ``<prefix>:``: ``decision:<id>`` (the context, expiring after ``decision_ttl_s``),
``decisions`` (stream of every decision), ``experience`` (stream of experience records, the input
of retraining), ``feedback:<id>`` (marker that the decision has feedback; ``feedback:<id>#proxy`` for the
proxy's call record). Streams are trimmed with
``XADD MAXLEN ~``. Feedback is one Lua script (check the decision, check the marker, append, mark),
so it is atomic; the keys of one call live in different hash slots (a standalone Redis or a single
shard). While Redis is unreachable, decisions and the feedback of decisions held there go to the
durable :class:`~experience.outbox.Outbox` and are drained, in order and idempotently, when
Redis is back; other feedback answers 503. ``docs/outbox.md`` describes the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contract.experience import (
    DecisionContext,
    ExperienceRecord,
    Feedback,
    parse_record,
    record_key,
)
from experience.base import (
    DuplicateFeedback,
    ExperienceStore,
    StoreUnavailable,
    UnknownDecision,
    dump_json,
)
from experience.layout import EXPERIENCE_STREAM, RECORD_FIELD
from experience.outbox import Outbox, OutboxRow
from experience.redis_client import RedisErrors, open_redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

_STREAM_ID = re.compile(r"\d+(-\d+)?")

# KEYS: decision key, feedback marker, experience stream.
# ARGV: decision id, feedback JSON object (non-empty), stream maxlen, marker TTL (s).
# The record is the context JSON object with the feedback members appended (no re-encoding, so
# floats keep their exact text).
_FEEDBACK_LUA = """
local ctx = redis.call('GET', KEYS[1])
if not ctx then return {'unknown'} end
if redis.call('EXISTS', KEYS[2]) == 1 then return {'duplicate'} end
local context = cjson.decode(ctx)
for k, _ in pairs(cjson.decode(ARGV[2])) do
  if context[k] ~= nil then return {'clash', k} end
end
local record = string.sub(ctx, 1, -2) .. ',' .. string.sub(ARGV[2], 2)
local id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*',
                      'decision_id', ARGV[1], 'record', record)
redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
return {'ok', id, record}
"""

# Drain of one outbox row (see the module docstring); both return 1 when written, 0 when Redis
# already had it.
# KEYS: decision key, decisions stream. ARGV: decision id, context JSON, stream maxlen, key TTL (s).
_DRAIN_DECISION_LUA = """
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[4]) then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'decision_id', ARGV[1], 'context', ARGV[2])
return 1
"""
# KEYS: feedback marker, experience stream. ARGV: decision id, record JSON, maxlen, marker TTL (s).
_DRAIN_EXPERIENCE_LUA = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'decision_id', ARGV[1], 'record', ARGV[2])
redis.call('SET', KEYS[1], id, 'EX', ARGV[4])
return 1
"""


class RedisExperienceStore(ExperienceStore):
    """:class:`ExperienceStore` on Redis.

    Args:
        url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``), or an open client to share
            (:func:`experience.redis_client.open_redis`; then closing the store leaves it open).
        prefix: key prefix; every key is ``<prefix>:...``.
        stream_maxlen: approximate maximum length of each stream.
        decision_ttl_s: seconds a decision context is kept waiting for feedback.
        socket_timeout_s: timeout of each socket read/write.
        connect_timeout_s: timeout of each connection attempt.
        outbox: the durable local outbox used while Redis is unreachable; None: no outbox (writes
            then fail with :class:`StoreUnavailable` while Redis is down).
        drain_interval_s: seconds between checks of the outbox (and pings while degraded).
        drain_batch: outbox rows sent to Redis per pipeline.
        redis_errors: where failed calls are counted (shared by the app); None: a new tally.

    Attributes:
        outbox_appended: records this store wrote to the outbox.
        outbox_drained: records it drained into Redis.
        outbox_duplicates: outbox records it found already in Redis (dropped).

    Connections are made lazily: constructing the store never fails because Redis is down.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str | aioredis.Redis,
        prefix: str = "agent-router",
        stream_maxlen: int = 1_000_000,
        decision_ttl_s: int = 86400,
        socket_timeout_s: float = 2.0,
        connect_timeout_s: float = 1.0,
        outbox: Outbox | None = None,
        drain_interval_s: float = 0.25,
        drain_batch: int = 200,
        redis_errors: RedisErrors | None = None,
    ) -> None:
        self.prefix = prefix
        self.outbox = outbox
        self.drain_interval_s = drain_interval_s
        self.drain_batch = drain_batch
        self.outbox_appended = 0
        self.outbox_drained = 0
        self.outbox_duplicates = 0
        self._degraded = False
        self._wake = asyncio.Event()
        self._drainer: asyncio.Task[None] | None = None
        self.stream_maxlen = stream_maxlen
        self.decision_ttl_s = decision_ttl_s
        self.decisions_stream = f"{prefix}:decisions"
        self.experience_stream = f"{prefix}:{EXPERIENCE_STREAM}"
        self._owns_client = isinstance(url, str)
        self._redis = open_redis(url, socket_timeout_s, connect_timeout_s) if isinstance(url, str) else url
        self._feedback_script = self._redis.register_script(_FEEDBACK_LUA)
        self._drain_decision = self._redis.register_script(_DRAIN_DECISION_LUA)
        self._drain_experience = self._redis.register_script(_DRAIN_EXPERIENCE_LUA)
        #: Failed Redis calls by operation (``put_decision``, ...), exported as
        #: ``router_redis_errors_total`` by :mod:`router.metrics`.
        self.redis_errors = redis_errors if redis_errors is not None else RedisErrors()

    def decision_key(self, decision_id: str) -> str:
        """Key of a decision context."""
        return f"{self.prefix}:decision:{decision_id}"

    def feedback_key(self, key: str) -> str:
        """Key of the marker that a record is written; ``key`` is the decision id, or
        :func:`~contract.experience.record_key` of the proxy's call record."""
        return f"{self.prefix}:feedback:{key}"

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except RedisError as exc:
            self.redis_errors[what] += 1
            raise StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            self.redis_errors[what] += 1
            raise StoreUnavailable(f"redis {what} failed: {exc}") from exc

    async def put_decision(self, context: DecisionContext) -> None:
        """SET the context with TTL and XADD it to the decisions stream, in one MULTI/EXEC; while
        Redis is unreachable (and until the outbox drained), append it to the outbox instead."""
        decision_id = context.decision_id
        payload = dump_json(context)
        if self.outbox is None:
            await self._put_decision_redis(decision_id, payload)
            return
        self.start()
        if not self._degraded:
            try:
                await self._put_decision_redis(decision_id, payload)
                return
            except StoreUnavailable as exc:
                self._degrade(exc)
        await self.outbox.append_decision(decision_id, payload, self.decision_ttl_s)
        self.outbox_appended += 1
        self._wake.set()

    async def _put_decision_redis(self, decision_id: str, payload: str) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.decision_key(decision_id), payload, ex=self.decision_ttl_s)
        pipe.xadd(
            self.decisions_stream,
            {"decision_id": decision_id, "context": payload},
            maxlen=self.stream_maxlen,
            approximate=True,
        )
        await self._call("put_decision", pipe.execute())

    async def record_feedback(self, decision_id: str, feedback: Feedback) -> ExperienceRecord:
        """Run the feedback script; see :meth:`ExperienceStore.record_feedback`.

        A decision held in the outbox gets its record validated and appended there (see the
        module docstring); any other needs Redis (:class:`StoreUnavailable` while unreachable).
        """
        fields = feedback.to_json_dict()
        key = record_key(decision_id, feedback.source)
        if self.outbox is not None and await self.outbox.holds(decision_id):
            record = await self.outbox.record_feedback(decision_id, fields, key=key)
            if record is not None:
                self.outbox_appended += 1
                self.start()
                self._wake.set()
                return record
        payload = dump_json(fields)
        try:
            result = await self._call(
                "record_feedback",
                self._feedback_script(
                    keys=[
                        self.decision_key(decision_id),
                        self.feedback_key(key),
                        self.experience_stream,
                    ],
                    args=[decision_id, payload, self.stream_maxlen, self.decision_ttl_s],
                ),
            )
        except StoreUnavailable as exc:
            if self.outbox is not None:
                self._degrade(exc)
            raise
        status = result[0]
        if status == "unknown":
            raise UnknownDecision(decision_id)
        if status == "duplicate":
            raise DuplicateFeedback(decision_id)
        if status == "clash":
            raise ValueError(f"feedback key {result[1]!r} clashes with the decision context")
        return parse_record(result[2])

    async def read_experience(
        self, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """XRANGE of the experience stream after stream id ``after``."""
        if count < 1:
            raise ValueError(f"count must be >= 1, got {count}")
        if after is not None and not _STREAM_ID.fullmatch(after):
            raise ValueError(f"{after!r} is not a Redis stream id")
        start = "-" if after is None else f"({after}"
        entries = await self._call(
            "read_experience", self._redis.xrange(self.experience_stream, start, "+", count=count)
        )
        return [(entry_id, json.loads(fields[RECORD_FIELD])) for entry_id, fields in entries]

    async def ping(self) -> None:
        """PING Redis."""
        await self._call("ping", self._redis.ping())

    async def writable(self) -> str:
        """``"redis"`` when Redis answers; ``"outbox"`` when only the outbox can take writes."""
        try:
            await self.ping()
            return "redis"
        except StoreUnavailable:
            if self.outbox is None:
                raise
            await self.outbox.count()
            return "outbox"

    # --- outbox ----------------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """True while new decisions go to the outbox (Redis failed and the outbox has not drained)."""
        return self._degraded

    async def outbox_depth(self) -> int:
        """Records waiting in the outbox (0 without one); exported as ``router_outbox_depth``.

        Raises:
            StoreUnavailable: the outbox cannot be read.
        """
        return 0 if self.outbox is None else await self.outbox.count()

    def _degrade(self, exc: Exception) -> None:
        if not self._degraded:
            logger.warning("redis unreachable (%s): decisions go to the outbox %s until it is back",
                           exc, self.outbox.path if self.outbox is not None else None)
        self._degraded = True
        self._wake.set()

    def start(self) -> None:
        """Start the background drain of the outbox (idempotent; needs a running event loop)."""
        if self.outbox is not None and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.get_running_loop().create_task(self._drain_loop(), name="outbox-drain")

    async def drain_once(self) -> int:
        """Move up to ``drain_batch`` of the oldest outbox rows into Redis, in order.

        With the outbox empty and the store degraded, PING Redis and leave degraded mode.

        Returns:
            The number of rows taken from the outbox (written or found already there).

        Raises:
            StoreUnavailable: Redis or the outbox failed; the rows stay and are retried.
        """
        if self.outbox is None:
            return 0
        rows = await self.outbox.peek(self.drain_batch)
        if not rows:
            if self._degraded:
                await self.ping()
                self._degraded = False
                logger.warning("redis reachable again and the outbox is empty: writing to redis directly")
            return 0
        pipe = self._redis.pipeline(transaction=False)
        now = time.time()
        for row in rows:
            await self._queue_drain(pipe, row, now)
        results = await self._call("drain", pipe.execute(raise_on_error=False))
        done: list[int] = []
        duplicates = 0
        failure: Exception | None = None
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):  # keep the order: stop at the first failed row
                failure = result
                break
            done.append(row.seq)
            if int(result) == 0:
                duplicates += 1
                logger.info("outbox: %s of %s was already in redis; dropped the copy", row.kind, row.decision_id)
        await self.outbox.delete(done)
        self.outbox_drained += len(done) - duplicates
        self.outbox_duplicates += duplicates
        if done:
            logger.warning("outbox: drained %d records into redis (%d already there)", len(done), duplicates)
        if failure is not None:
            raise StoreUnavailable(f"redis drain failed: {type(failure).__name__}: {failure}")
        return len(done)

    async def _queue_drain(self, pipe: Any, row: OutboxRow, now: float) -> None:
        if row.kind == "decision":
            ttl = max(1, math.ceil(row.expires_at - now))
            await self._drain_decision(
                keys=[self.decision_key(row.decision_id), self.decisions_stream],
                args=[row.decision_id, row.payload, self.stream_maxlen, ttl],
                client=pipe,
            )
        else:
            await self._drain_experience(
                keys=[self.feedback_key(row.decision_id), self.experience_stream],
                args=[row.decision_id, row.payload, self.stream_maxlen, self.decision_ttl_s],
                client=pipe,
            )

    async def _drain_loop(self) -> None:
        """Drain whenever woken or every ``drain_interval_s``; back off (up to 2 s) on failures."""
        wait_s = self.drain_interval_s
        failing = False
        while True:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can lose a cancellation that
            # lands while the inner wait completes, and close() would then wait forever
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()
            self._wake.clear()
            try:
                while await self.drain_once() >= self.drain_batch:
                    pass
            except StoreUnavailable as exc:
                if not failing:
                    logger.warning("outbox: cannot drain yet (%s); retrying", exc)
                failing = True
                wait_s = min(max(wait_s * 2, self.drain_interval_s), 2.0)
                continue
            except Exception:  # never let the drainer die silently
                logger.exception("outbox: drain failed")
                wait_s = 2.0
                continue
            failing = False
            wait_s = self.drain_interval_s

    async def close(self) -> None:
        """Stop the drain task, close the outbox and the connection pool (pending rows stay on disk
        and are drained by the next start)."""
        if self._drainer is not None:
            self._drainer.cancel()
            await asyncio.wait({self._drainer}, timeout=5.0)  # bounded: close() must never hang
            self._drainer = None
        if self.outbox is not None:
            await self.outbox.close()
        if self._owns_client:
            await self._redis.aclose()
