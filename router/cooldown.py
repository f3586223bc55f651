"""Cooldowns: an agent whose feedback quality collapses is taken out of routing for a while, on
every replica, then let back in on probation (the circuit breaker of LiteLLM's cooldowns).

Per agent, the last ``window`` feedback qualities are kept. When at least ``min_feedback`` of them
average at most ``quality``, the agent **cools down** for ``seconds``: the routing mask leaves it
out. When the cooldown ends it is **probing**: it routes as usual, its window starts empty, and
after ``probe_feedback`` feedbacks it either recovers (their mean is above ``quality``) or cools
down again. With Redis the windows and the cooldowns are shared by every replica
(``<prefix>:quality:<agent>``, ``<prefix>:cooldown:<agent>`` with a TTL,
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
    """When an agent cools down (see the module docstring). ``seconds`` 0 turns cooldowns off."""

    quality: float = 0.05
    window: int = 20
    min_feedback: int = 10
    probe_feedback: int = 3
    seconds: float = 60.0

    @property
    def enabled(self) -> bool:
        return self.seconds > 0


def _verdict(policy: CooldownPolicy, qualities: Sequence[float], probing: bool) -> str | None:
    """``"cool"``, ``"recover"`` (a probe that went well) or None, for the window ``qualities``."""
    need = policy.probe_feedback if probing else policy.min_feedback
    if len(qualities) < need:
        return None
    recent = list(qualities)[:need] if probing else list(qualities)
    mean = sum(recent) / len(recent)
    if mean <= policy.quality:
        return "cool"
    return "recover" if probing else None


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
            window.clear()
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
                await self._r.delete(window)  # feedback of decisions made before the cooldown
                return
            verdict = _verdict(self.policy, [float(v) for v in values], bool(probing))
            if verdict == "cool":
                async with self._r.pipeline(transaction=True) as pipe:
                    # the probe key outlives the cooldown: the agent comes back on probation
                    pipe.set(cool, "1", px=int(self.policy.seconds * 1000))
                    pipe.set(probe, "1", px=int(self.policy.seconds * 1000) + 86_400_000)
                    pipe.delete(window)
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
