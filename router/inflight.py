"""Live load of the specialist agents (requests in flight) and which agents are marked down.

Each routing decision takes a *lease* on the chosen agent, released by its feedback or expired
after ``ROUTER_INFLIGHT_TTL_S``. With Redis every replica shares the leases (a sorted set
``<prefix>:inflight:<agent>`` of decision ids scored by expiry, Unix seconds) and the down set
``<prefix>:agents:down``; without Redis both live in the process. The in-flight counts become the
observation's load through :func:`contract.observation.normalised_load`. Redis failures never fail a
route: the tracker falls back to this process's view, retries after :data:`RETRY_AFTER_FAILURE_S`,
and counts the failure. ``docs/serving.md`` has the derivation and the failure semantics.
"""

from __future__ import annotations

import abc
import asyncio
import itertools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from contract.errors import DomainError
from experience.base import StoreUnavailable
from experience.redis_client import RedisErrors, open_redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a tracker waits after a Redis failure before it tries Redis again.
RETRY_AFTER_FAILURE_S = 1.0


class NoAgentAvailable(DomainError):
    """Every agent the request allows is down (HTTP 409)."""

    status_code = 409


@dataclass(frozen=True)
class LoadSnapshot:
    """Live state of the agents at one moment.

    Attributes:
        in_flight: agent name -> unexpired leases (requests routed to it and not yet answered).
        down: names of the agents marked down.
        shared: True when read from Redis (all replicas), False when this process's view only.
    """

    in_flight: Mapping[str, int]
    down: frozenset[str]
    shared: bool = False


class LoadTracker(abc.ABC):
    """In-flight leases per agent and the set of agents down. Coroutines, safe to share.

    Args:
        ttl_s: seconds after which a lease not released by feedback expires.
    """

    def __init__(self, ttl_s: float) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.ttl_s = float(ttl_s)

    @abc.abstractmethod
    async def snapshot(self, agents: Sequence[str]) -> LoadSnapshot:
        """In-flight counts of ``agents`` and the down set. Never raises for a backend failure."""

    @abc.abstractmethod
    async def take(self, agent: str, decision_id: str) -> None:
        """Lease one in-flight request of ``agent`` for ``decision_id`` (expires after ``ttl_s``).

        Never raises for a backend failure (the lease is then kept in the process only).
        """

    @abc.abstractmethod
    async def release(self, agent: str, decision_id: str) -> None:
        """Drop the lease of ``decision_id`` on ``agent`` (no-op when absent or expired).

        Never raises for a backend failure (the lease then expires by its TTL).
        """

    @abc.abstractmethod
    async def set_down(self, agent: str, down: bool) -> None:
        """Mark ``agent`` down (True) or up (False) for every replica.

        Raises:
            StoreUnavailable: the shared state could not be written (nothing changed).
        """

    async def close(self) -> None:  # noqa: B027 - optional hook, nothing to release by default
        """Release connections."""


class LocalLoadTracker(LoadTracker):
    """:class:`LoadTracker` of one process (the SQLite setup, and the fallback of the Redis one).

    Args:
        ttl_s: lease lifetime in seconds.
        clock: time source in seconds (monotonic by default; tests pass their own).
    """

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(ttl_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._leases: dict[str, dict[str, float]] = {}  # agent -> decision_id -> expiry (s)
        self._down: set[str] = set()

    def counts(self, agents: Sequence[str]) -> dict[str, int]:
        """Unexpired leases of each of ``agents`` (purging the expired ones)."""
        now = self._clock()
        out = {}
        with self._lock:
            for agent in agents:
                leases = self._leases.get(agent)
                if leases:
                    # insertion order is expiry order (one TTL, a monotonic clock): the expired
                    # leases are a prefix, so a request costs O(expired), not O(in flight)
                    expired = [d for d, _ in itertools.takewhile(lambda item: item[1] <= now, leases.items())]
                    for d in expired:
                        del leases[d]
                out[agent] = len(leases) if leases else 0
        return out

    def down_set(self) -> frozenset[str]:
        with self._lock:
            return frozenset(self._down)

    def replace_down(self, down: Collection[str]) -> None:
        """Overwrite the down set (the Redis tracker mirrors what it last read)."""
        with self._lock:
            self._down = set(down)

    def take_now(self, agent: str, decision_id: str) -> None:
        with self._lock:
            leases = self._leases.setdefault(agent, {})
            leases.pop(decision_id, None)  # re-inserted last: keeps insertion order = expiry order
            leases[decision_id] = self._clock() + self.ttl_s

    def release_now(self, agent: str, decision_id: str) -> None:
        with self._lock:
            leases = self._leases.get(agent)
            if leases is not None:
                leases.pop(decision_id, None)

    def set_down_now(self, agent: str, down: bool) -> None:
        with self._lock:
            if down:
                self._down.add(agent)
            else:
                self._down.discard(agent)

    async def snapshot(self, agents: Sequence[str]) -> LoadSnapshot:
        return LoadSnapshot(self.counts(agents), self.down_set(), shared=False)

    async def take(self, agent: str, decision_id: str) -> None:
        self.take_now(agent, decision_id)

    async def release(self, agent: str, decision_id: str) -> None:
        self.release_now(agent, decision_id)

    async def set_down(self, agent: str, down: bool) -> None:
        self.set_down_now(agent, down)


class RedisLoadTracker(LoadTracker):
    """:class:`LoadTracker` shared by every replica through Redis.

    Keys: ``<prefix>:inflight:<agent>`` (sorted set: decision id -> expiry, Unix seconds; the key
    itself expires ``2 * ttl_s`` after its last lease) and ``<prefix>:agents:down`` (set).

    Args:
        url: Redis URL, or an open client to share (closing the tracker leaves it open).
        prefix: key prefix.
        ttl_s: lease lifetime in seconds.
        socket_timeout_s: bound on each Redis call; short, since a route waits for it.
        clock: wall-clock time source in Unix seconds (tests pass their own).
        redis_errors: where failed calls are counted (``load.<call>``); None: a new tally.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str | aioredis.Redis,
        prefix: str,
        ttl_s: float,
        socket_timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
        redis_errors: RedisErrors | None = None,
    ) -> None:
        super().__init__(ttl_s)
        self.prefix = prefix
        self.down_key = f"{prefix}:agents:down"
        self._clock = clock
        self._owns_client = isinstance(url, str)
        self._redis = open_redis(url, socket_timeout_s, socket_timeout_s) if isinstance(url, str) else url
        self.timeout_s = socket_timeout_s
        self.redis_errors = redis_errors if redis_errors is not None else RedisErrors()
        self.local = LocalLoadTracker(ttl_s)
        self._skip_until = 0.0  # monotonic time before which Redis is not tried (after a failure)

    def inflight_key(self, agent: str) -> str:
        """Key of the leases of ``agent``."""
        return f"{self.prefix}:inflight:{agent}"

    async def _try(self, what: str, call: Callable[[], Awaitable[T]]) -> tuple[bool, T | None]:
        """``(True, result)``, or ``(False, None)`` after logging a Redis failure."""
        if time.monotonic() < self._skip_until:
            return False, None
        try:
            async with asyncio.timeout(self.timeout_s):
                return True, await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self.redis_errors.note(f"load.{what}")
            self._skip_until = time.monotonic() + RETRY_AFTER_FAILURE_S
            logger.warning("load tracking: redis %s failed (%s: %s); using this process's view",
                           what, type(exc).__name__, exc)
            return False, None

    async def snapshot(self, agents: Sequence[str]) -> LoadSnapshot:
        """One pipeline: ZCOUNT of the unexpired leases of each agent, SMEMBERS of the down set."""
        now = self._clock()

        async def read() -> list[Any]:
            pipe = self._redis.pipeline(transaction=False)
            for agent in agents:
                pipe.zcount(self.inflight_key(agent), f"({now}", "+inf")
            pipe.smembers(self.down_key)
            return await pipe.execute()

        ok, result = await self._try("snapshot", read)
        if not ok or result is None:
            return LoadSnapshot(self.local.counts(agents), self.local.down_set(), shared=False)
        down = frozenset(result[-1])
        self.local.replace_down(down)
        self.local.counts(agents)  # purge the local mirror's expired leases
        return LoadSnapshot(dict(zip(agents, (int(n) for n in result[:-1]), strict=True)), down, shared=True)

    async def take(self, agent: str, decision_id: str) -> None:
        """Purge expired leases of ``agent``, ZADD this one, refresh the key's TTL (one pipeline)."""
        self.local.take_now(agent, decision_id)
        now = self._clock()
        key = self.inflight_key(agent)

        async def write() -> None:
            pipe = self._redis.pipeline(transaction=False)
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zadd(key, {decision_id: now + self.ttl_s})
            pipe.expire(key, max(1, math.ceil(2 * self.ttl_s)))
            await pipe.execute()

        await self._try("take", write)

    async def release(self, agent: str, decision_id: str) -> None:
        """ZREM the lease."""
        self.local.release_now(agent, decision_id)
        await self._try("release", lambda: self._redis.zrem(self.inflight_key(agent), decision_id))

    async def set_down(self, agent: str, down: bool) -> None:
        """SADD / SREM ``agent`` in the down set (tried even right after a failure)."""
        try:
            if down:
                await self._redis.sadd(self.down_key, agent)
            else:
                await self._redis.srem(self.down_key, agent)
        except (RedisError, OSError) as exc:
            self.redis_errors.note("load.set_down")
            raise StoreUnavailable(f"redis set_down failed: {type(exc).__name__}: {exc}") from exc
        self.local.set_down_now(agent, down)

    async def close(self) -> None:
        if self._owns_client:
            await self._redis.aclose()
