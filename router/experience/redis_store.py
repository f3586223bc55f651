"""Experience log in Redis (redis-py asyncio): keys with TTL for decisions, streams for the log.

Keys, all under ``<prefix>:``:

- ``decision:<id>``: the decision context (JSON string), expiring after ``decision_ttl_s``.
- ``decisions``: stream of every decision (fields ``decision_id``, ``context``).
- ``experience``: stream of experience records (fields ``decision_id``, ``record`` JSON), the
  input of retraining.
- ``feedback:<id>``: marker that the decision has feedback (value: the experience entry id),
  expiring after ``decision_ttl_s`` (so it outlives the decision key).

Streams are trimmed approximately (``XADD MAXLEN ~``) to ``stream_maxlen`` entries. Feedback is one
Lua script, so checking the decision, checking the marker, appending the record and setting the
marker happen atomically. A write is "durable" once Redis acknowledged it; configure the server's
persistence (``appendfsync always``) for durability across Redis restarts. The keys of one call
live in different hash slots: use a standalone Redis (or a single-shard deployment).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from router.experience.base import (
    DuplicateFeedback,
    ExperienceStore,
    StoreUnavailable,
    UnknownDecision,
    require_decision_id,
    utc_now_iso,
)

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


class RedisExperienceStore(ExperienceStore):
    """:class:`ExperienceStore` on Redis.

    Args:
        url: ``redis://host:port/db`` (or ``rediss://``, ``unix://``).
        prefix: key prefix; every key is ``<prefix>:...``.
        stream_maxlen: approximate maximum length of each stream.
        decision_ttl_s: seconds a decision context is kept waiting for feedback.
        socket_timeout_s: timeout of each socket read/write.
        connect_timeout_s: timeout of each connection attempt.

    Connections are made lazily: constructing the store never fails because Redis is down.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str,
        prefix: str = "agent-router",
        stream_maxlen: int = 1_000_000,
        decision_ttl_s: int = 86400,
        socket_timeout_s: float = 2.0,
        connect_timeout_s: float = 1.0,
    ) -> None:
        self.prefix = prefix
        self.stream_maxlen = stream_maxlen
        self.decision_ttl_s = decision_ttl_s
        self.decisions_stream = f"{prefix}:decisions"
        self.experience_stream = f"{prefix}:experience"
        # One retry, on connection errors only (a stale pooled connection); a timeout is not
        # retried since the command may have run.
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=connect_timeout_s,
            retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            health_check_interval=30,
        )
        self._feedback_script = self._redis.register_script(_FEEDBACK_LUA)

    def decision_key(self, decision_id: str) -> str:
        """Key of a decision context."""
        return f"{self.prefix}:decision:{decision_id}"

    def feedback_key(self, decision_id: str) -> str:
        """Key of a decision's feedback marker."""
        return f"{self.prefix}:feedback:{decision_id}"

    async def _call(self, what: str, awaitable: Awaitable[T]) -> T:
        try:
            return await awaitable
        except RedisError as exc:
            raise StoreUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise StoreUnavailable(f"redis {what} failed: {exc}") from exc

    async def put_decision(self, context: dict[str, Any]) -> None:
        """SET the context with TTL and XADD it to the decisions stream, in one MULTI/EXEC."""
        decision_id = require_decision_id(context)
        payload = json.dumps(context, separators=(",", ":"), allow_nan=False)
        pipe = self._redis.pipeline(transaction=True)
        pipe.set(self.decision_key(decision_id), payload, ex=self.decision_ttl_s)
        pipe.xadd(
            self.decisions_stream,
            {"decision_id": decision_id, "context": payload},
            maxlen=self.stream_maxlen,
            approximate=True,
        )
        await self._call("put_decision", pipe.execute())

    async def record_feedback(self, decision_id: str, feedback: dict[str, Any]) -> dict[str, Any]:
        """Run the feedback script; see :meth:`ExperienceStore.record_feedback`."""
        fields = {**feedback}
        fields.setdefault("feedback_at", utc_now_iso())
        payload = json.dumps(fields, separators=(",", ":"), allow_nan=False)
        result = await self._call(
            "record_feedback",
            self._feedback_script(
                keys=[
                    self.decision_key(decision_id),
                    self.feedback_key(decision_id),
                    self.experience_stream,
                ],
                args=[decision_id, payload, self.stream_maxlen, self.decision_ttl_s],
            ),
        )
        status = result[0]
        if status == "unknown":
            raise UnknownDecision(decision_id)
        if status == "duplicate":
            raise DuplicateFeedback(decision_id)
        if status == "clash":
            raise ValueError(f"feedback key {result[1]!r} clashes with the decision context")
        return json.loads(result[2])

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
        return [(entry_id, json.loads(fields["record"])) for entry_id, fields in entries]

    async def ping(self) -> None:
        """PING Redis."""
        await self._call("ping", self._redis.ping())

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
