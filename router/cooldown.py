"""Cooldowns: an agent whose feedback collapses is taken out of routing for a while, on every
replica, then let back in on probation (the circuit breaker of LiteLLM's cooldowns).

A feedback quality at or below ``quality`` is a **failure**. Per agent the last ``window``
qualities are kept, newest first. The agent **cools down** for ``seconds`` when the run of failures
at the head is at least ``min_feedback`` long and would happen to the agent as it was before the run
with a chance of at most ``false_alarm``: ``(1 - s)^run <= false_alarm``, ``s`` its rate of
non-failures over the rest of the window (``(successes + 1) / (count + 2)``, Laplace's rule). A
broken agent that usually works cools after a short run (``s`` 0.7: 8 failures at 1e-4, floored at
``min_feedback``); a weak agent that fails four times in five needs 42 in a row, which it does by
chance about once in 60,000 feedbacks, so it keeps serving and the learner, not the breaker, decides
how much traffic it gets. This is a sequential test of the run against the agent's own record (a
one-sided run test with its false-alarm rate fixed, as in Page's CUSUM, Page 1954, Biometrika
41(1/2)), not a fixed mean threshold, which cooled weak but working agents.

The feedback that made the run is logged as any other (``POST /v1/feedback`` writes the record
before it is counted here): the learner sees the failures the breaker acted on. When the cooldown
ends the agent is **probing**: it routes as usual; a non-failure recovers it, ``probe_feedback``
failures in a row cool it down again. With Redis the windows and the cooldowns are shared by every
replica (``<prefix>:quality:<agent>``, ``<prefix>:cooldown:<agent>`` with a TTL,
``<prefix>:probe:<agent>``); without it they are this process's.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from experience.redis_client import RedisErrors

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CooldownPolicy:
    """When an agent cools down (see the module docstring). ``seconds`` 0 turns cooldowns off.

    Attributes:
        quality: a feedback quality at or below this is a failure.
        window: feedbacks kept per agent (the run and the record it is judged against).
        min_feedback: the shortest run of failures that cools an agent.
        probe_feedback: failures in a row that cool an agent on probation again.
        seconds: how long a cooldown lasts.
        false_alarm: the largest chance, under the agent's own record, of the run that cools it.
    """

    quality: float = 0.05
    window: int = 200
    min_feedback: int = 10
    probe_feedback: int = 3
    seconds: float = 60.0
    false_alarm: float = 1e-4

    @property
    def enabled(self) -> bool:
        return self.seconds > 0


def failure_run(policy: CooldownPolicy, qualities: Sequence[float]) -> int:
    """How many of ``qualities`` (newest first) in a row, from the newest, are failures."""
    run = 0
    for q in qualities:
        if q > policy.quality:
            break
        run += 1
    return run


def _verdict(policy: CooldownPolicy, qualities: Sequence[float], probing: bool) -> str | None:
    """``"cool"``, ``"recover"`` (a probe that went well) or None, for the window ``qualities``
    (newest first)."""
    if not qualities:
        return None
    run = failure_run(policy, qualities)
    if probing:
        if run >= policy.probe_feedback:
            return "cool"
        return "recover" if run == 0 else None
    if run < policy.min_feedback:
        return None
    record = list(qualities)[run:]
    success = (sum(q > policy.quality for q in record) + 1) / (len(record) + 2)
    return "cool" if (1.0 - success) ** run <= policy.false_alarm else None


class Cooldowns(abc.ABC):
    """Feedback in, agents cooling down out. Coroutines, safe to share."""

    def __init__(self, policy: CooldownPolicy, on_cool: Callable[[str], None] | None = None) -> None:
        self.policy, self._on_cool = policy, on_cool

    @abc.abstractmethod
    async def observe(self, agent: str, quality: float) -> None:
        """Take one feedback quality of ``agent``; may start its cooldown."""

    @abc.abstractmethod
    async def cooling(self, agents: Sequence[str]) -> Mapping[str, float]:
        """Agents (of ``agents``) cooling down now -> seconds left."""

    def _cooled(self, agent: str) -> None:
        logger.warning("agent %s cools down for %.0f s: its feedback quality collapsed", agent, self.policy.seconds)
        if self._on_cool is not None:
            self._on_cool(agent)


class LocalCooldowns(Cooldowns):
    """This process's cooldowns (without Redis)."""

    def __init__(self, policy: CooldownPolicy, on_cool: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(policy, on_cool)
        self._clock = clock
        self._window: dict[str, deque[float]] = {}
        self._until: dict[str, float] = {}
        self._probing: set[str] = set()

    async def observe(self, agent: str, quality: float) -> None:
        if not self.policy.enabled or self._until.get(agent, 0.0) > self._clock():
            return
        if agent in self._until:  # the cooldown is over: on probation
            del self._until[agent]
            self._probing.add(agent)
        window = self._window.setdefault(agent, deque(maxlen=self.policy.window))
        window.appendleft(quality)
        verdict = _verdict(self.policy, window, agent in self._probing)
        if verdict == "cool":
            self._until[agent] = self._clock() + self.policy.seconds
            self._probing.discard(agent)
            for _ in range(failure_run(self.policy, window)):  # the run is spent; the record before it stays
                window.popleft()
            self._cooled(agent)
        elif verdict == "recover":
            self._probing.discard(agent)

    async def cooling(self, agents: Sequence[str]) -> Mapping[str, float]:
        now = self._clock()
        return {a: self._until[a] - now for a in agents if self._until.get(a, 0.0) > now}


class RedisCooldowns(Cooldowns):
    """Cooldowns shared by every replica through Redis. A Redis failure is counted in
    ``redis_errors`` (``cooldown.*``) and treated as "no cooldown": routing goes on."""

    def __init__(self, client: aioredis.Redis, prefix: str, policy: CooldownPolicy,
                 redis_errors: RedisErrors | None = None, on_cool: Callable[[str], None] | None = None) -> None:
        super().__init__(policy, on_cool)
        self._r, self._prefix, self._errors = client, prefix, redis_errors

    def _key(self, kind: str, agent: str) -> str:
        return f"{self._prefix}:{kind}:{agent}"

    def _failed(self, what: str, exc: Exception) -> None:
        logger.warning("cooldown %s: Redis failed: %s", what, exc)
        if self._errors is not None:
            self._errors.note(f"cooldown.{what}")

    async def observe(self, agent: str, quality: float) -> None:
        if not self.policy.enabled:
            return
        window, cool, probe = (self._key(k, agent) for k in ("quality", "cooldown", "probe"))
        try:
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.exists(cool).exists(probe).lpush(window, quality).ltrim(window, 0, self.policy.window - 1)
                pipe.lrange(window, 0, -1)
                cooling, probing, _, _, values = await pipe.execute()
            if cooling:
                await self._r.lpop(window)  # feedback of a decision made before the cooldown: not counted
                return
            qualities = [float(v) for v in values]
            verdict = _verdict(self.policy, qualities, bool(probing))
            if verdict == "cool":
                async with self._r.pipeline(transaction=True) as pipe:
                    # the probe key outlives the cooldown: the agent comes back on probation
                    pipe.set(cool, "1", px=int(self.policy.seconds * 1000))
                    pipe.set(probe, "1", px=int(self.policy.seconds * 1000) + 86_400_000)
                    pipe.ltrim(window, failure_run(self.policy, qualities), -1)  # the run is spent
                    await pipe.execute()
                self._cooled(agent)
            elif verdict == "recover":
                await self._r.delete(probe)
        except (RedisError, OSError) as exc:
            self._failed("observe", exc)

    async def cooling(self, agents: Sequence[str]) -> Mapping[str, float]:
        if not self.policy.enabled or not agents:
            return {}
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for a in agents:
                    pipe.pttl(self._key("cooldown", a))
                ttls = await pipe.execute()
        except (RedisError, OSError) as exc:
            self._failed("read", exc)
            return {}
        return {a: ms / 1000.0 for a, ms in zip(agents, ttls, strict=True) if isinstance(ms, int) and ms > 0}
