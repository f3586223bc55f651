"""The one asyncio Redis client of a server process, and the tally of failed Redis calls.

The experience store, the load tracker and the policy follower share the client (one connection
pool); each counts its failures in one :class:`RedisErrors` exported as
``router_redis_errors_total{operation}``.
"""

from __future__ import annotations

from collections import Counter

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError


class RedisErrors(Counter[str]):
    """Failed Redis calls by operation (``put_decision``, ``load.snapshot``, ``policy.follow``, ...)."""

    def note(self, operation: str) -> None:
        self[operation] += 1


def open_redis(url: str, socket_timeout_s: float = 2.0, connect_timeout_s: float = 1.0) -> aioredis.Redis:
    """A lazily connecting client of ``url`` (strings decoded).

    One retry, on connection errors only (a stale pooled connection); a timeout is not retried
    since the command may have run.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """
    return aioredis.Redis.from_url(
        url,
        decode_responses=True,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=connect_timeout_s,
        retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
        health_check_interval=30,
    )
