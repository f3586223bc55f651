"""Live load of the specialist agents (requests in flight) and which agents are marked down.

In-flight requests
    Every routing decision takes a *lease* on the chosen agent; the lease is released when the
    decision's feedback arrives, or expires ``ROUTER_INFLIGHT_TTL_S`` seconds after the route (a
    client that crashed, or never sends feedback, does not hold load for ever). With Redis the
    leases of all replicas are shared: ``<prefix>:inflight:<agent>`` is a sorted set whose members
    are decision ids scored by their expiry time (Unix seconds, the replica's clock); expired
    members are ignored by every count and purged on the next lease of that agent. Without Redis
    (SQLite store) leases are tracked in the process.

From in-flight requests to the load in the observation
    In training (:class:`env.prompt_env.PromptEnv`) agent ``k`` serves ``c_k`` requests per env
    step and the observation holds ``load_k = min(queue_k / c_k, load_clip)``, where ``queue_k`` is
    the backlog left *after* the step's service: ``queue_k' = max(0, queue_k + arrivals_k - c_k)``.
    Serving maps one env step to one service time of the agent, so the requests in flight at an
    agent are exactly ``queue_k + arrivals_k`` (the backlog plus what was just sent to it) and::

        queue_k = max(0, in_flight_k - c_k)
        load_k  = min(queue_k / c_k, load_clip)        # 0 when c_k is null (unbounded)

    i.e. an agent busy within its capacity shows load 0, as an agent whose queue cleared does in
    training; every ``c_k`` requests beyond its capacity add 1 (one step of backlog). ``c_k`` and
    ``load_clip`` come from the checkpoint (``policy.json`` ``capacities`` and
    ``obs_layout.load_clip``), the values the policy was trained with; a checkpoint without
    ``capacities`` is treated as all-unbounded (load always 0).

Agents down
    ``POST /admin/agents/{name}/down`` and ``/up`` (see :mod:`router.admin_agents`) edit the set
    ``<prefix>:agents:down`` (in the process without Redis). A down agent is masked out of every
    decision, like an agent not in the request's ``candidates``.

Redis failures never fail a route: a replica that cannot reach Redis counts its own leases (kept
in the process alongside) and uses the down set it last read, and retries Redis after
:data:`RETRY_AFTER_FAILURE_S`. Leases taken or released while Redis was unreachable are not
replayed: a lease whose release was lost keeps counting in Redis until its TTL.
"""

from __future__ import annotations

import abc
import itertools
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
import redis.asyncio as aioredis
from fastapi import Request
from redis.exceptions import RedisError

from router.experience.base import StoreUnavailable
from router.schemas import AgentInfo

if TYPE_CHECKING:
    from router.service import RoutingService

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a tracker waits after a Redis failure before it tries Redis again.
RETRY_AFTER_FAILURE_S = 1.0


class NoAgentAvailable(Exception):
    """Every agent the request allows is down (HTTP 409)."""


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


def policy_capacities(meta: Mapping[str, Any], agents: Sequence[str]) -> list[int | None]:
    """Capacity (requests per env step; None: unbounded) of each agent, from ``meta["capacities"]``.

    A checkpoint without a usable ``capacities`` list (length ``K``, entries positive numbers or
    null) gets all None: nothing in training says how its agents saturate.
    """
    raw = meta.get("capacities")
    if not isinstance(raw, list) or len(raw) != len(agents):
        return [None] * len(agents)
    out: list[int | None] = []
    for c in raw:
        if c is None:
            out.append(None)
        elif isinstance(c, int | float) and not isinstance(c, bool) and c > 0 and math.isfinite(c):
            out.append(int(c))
        else:
            return [None] * len(agents)
    return out


def normalised_load(
    in_flight: Sequence[int], capacities: Sequence[int | None], load_clip: float
) -> np.ndarray:
    """``[K]`` float32 load of the observation: ``min(max(0, n_k - c_k) / c_k, load_clip)``.

    See the module docstring for why the in-flight requests beyond capacity stand for the
    training queue. Unbounded agents (``c_k`` None) have load 0.

    Raises:
        ValueError: ``in_flight`` and ``capacities`` differ in length.
    """
    if len(in_flight) != len(capacities):
        raise ValueError(f"{len(in_flight)} in-flight counts for {len(capacities)} agents")
    load = np.zeros(len(capacities), dtype=np.float32)
    for k, (n, c) in enumerate(zip(in_flight, capacities, strict=True)):
        if c is not None:
            load[k] = min(max(0, int(n) - c) / c, load_clip)
    return load


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
        url: Redis URL.
        prefix: key prefix.
        ttl_s: lease lifetime in seconds.
        socket_timeout_s: timeout of each Redis read/write; short, since a route waits for it.
        clock: wall-clock time source in Unix seconds (tests pass their own).

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        url: str,
        prefix: str,
        ttl_s: float,
        socket_timeout_s: float = 0.5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(ttl_s)
        self.prefix = prefix
        self.down_key = f"{prefix}:agents:down"
        self._clock = clock
        self._redis = aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
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
            return True, await call()
        except (RedisError, OSError) as exc:
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
            raise StoreUnavailable(f"redis set_down failed: {type(exc).__name__}: {exc}") from exc
        self.local.set_down_now(agent, down)

    async def close(self) -> None:
        await self._redis.aclose()


def open_load_tracker(redis_url: str | None, prefix: str, ttl_s: float) -> LoadTracker:
    """A :class:`RedisLoadTracker` when ``redis_url`` is set, else a :class:`LocalLoadTracker`.

    Raises:
        ValueError: a malformed Redis URL, or ``ttl_s`` <= 0.
    """
    if redis_url:
        return RedisLoadTracker(redis_url, prefix, ttl_s)
    return LocalLoadTracker(ttl_s)


async def get_load_tracker(request: Request) -> LoadTracker:
    """FastAPI dependency: the app's :class:`LoadTracker` (``app.state.load``)."""
    return request.app.state.load


def live_mask(agents: Sequence[str], allowed: np.ndarray, down: Collection[str],
              candidates: Sequence[str] | None) -> np.ndarray:
    """``allowed`` (``[K]`` bool, the ``candidates`` mask) without the agents that are down.

    Raises:
        NoAgentAvailable: nothing is left; the message names what was asked for and what is down.
    """
    if not down:
        return allowed
    up = np.array([a not in down for a in agents], dtype=bool)
    mask = allowed & up
    if not mask.any():
        down_names = ", ".join(repr(a) for a in agents if a in down)
        if candidates is None:
            raise NoAgentAvailable(f"every agent is marked down ({down_names}); no agent can take the request")
        raise NoAgentAvailable(
            f"every candidate is marked down ({', '.join(map(repr, candidates))}); agents up: "
            f"{', '.join(a for a in agents if a not in down) or 'none'}"
        )
    return mask


def live_agent_infos(infos: Sequence[AgentInfo], service: RoutingService, snapshot: LoadSnapshot) -> list[AgentInfo]:
    """``infos`` (one per agent of ``service``, in action order) with ``in_flight``, ``load`` and
    ``down`` from ``snapshot``; ``capacity`` is the one the load uses when the checkpoint records
    ``capacities``."""
    load = service.load_vector(snapshot.in_flight)
    recorded = isinstance(service.policy.meta.get("capacities"), list)
    out = []
    for k, info in enumerate(infos):
        update: dict[str, Any] = {
            "in_flight": int(snapshot.in_flight.get(info.name, 0)),
            "load": float(load[k]),
            "down": info.name in snapshot.down,
        }
        if recorded:
            update["capacity"] = service.capacities[k]
        out.append(info.model_copy(update=update))
    return out
