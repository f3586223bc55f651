"""Every replica on the policy version published in Redis (the protocol: :mod:`policy.versions`).

An admin reload or rollback on any replica validates locally, then publishes, then swaps. Every
replica re-reads ``<prefix>:policy:current`` on each message of ``<prefix>:policy:events``, on
start-up, after every reconnect and every ``ROUTER_POLICY_POLL_S`` seconds, so the last publish
wins and a replica that missed a message converges. ``docs/hot-swap.md`` has more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from experience.redis_client import RedisErrors
from policy.versions import VersionKeys
from router.registry import PolicyRefused, PolicyRegistry, PublishFailed
from router.settings import Settings

logger = logging.getLogger(__name__)

class PolicyFollower:
    """Publishes versions to Redis and keeps a :class:`PolicyRegistry` on the published one.

    Args:
        registry: the registry to keep in step.
        url: Redis URL, or an open client to share (closing the follower leaves it open).
        prefix: key prefix (``<prefix>:policy:current``, ``<prefix>:policy:events``).
        poll_interval_s: how often the key is re-read besides the messages.
        max_backoff_s: longest wait between reconnection attempts.
        redis_errors: where failed calls are counted (``policy.publish``, ``policy.follow``).

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        registry: PolicyRegistry,
        url: str | aioredis.Redis,
        prefix: str,
        poll_interval_s: float = 2.0,
        max_backoff_s: float = 5.0,
        redis_errors: RedisErrors | None = None,
    ) -> None:
        self.registry = registry
        self.keys = VersionKeys(prefix)
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self._owns_client = isinstance(url, str)
        self._redis = (aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=2.0,
                                               socket_timeout=5.0) if isinstance(url, str) else url)
        self.redis_errors = redis_errors if redis_errors is not None else RedisErrors()
        self._failed: str | None = None
        self.first_sync = asyncio.Event()

    async def publish(self, ref: str) -> None:
        """Publish version ``ref`` (:meth:`policy.versions.VersionKeys.queue_publish`).

        Raises:
            PublishFailed: Redis is unreachable or refused.
        """
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                await self.keys.queue_publish(pipe, ref).execute()
        except (RedisError, OSError) as exc:
            self.redis_errors.note("policy.publish")
            raise PublishFailed(f"could not publish policy {ref!r} to Redis ({type(exc).__name__}: {exc})") from None

    async def sync(self) -> None:
        """Read the key and serve what it names; a refused version is logged (once) and skipped.

        Raises:
            RedisError, OSError: Redis is unreachable.
        """
        ref = await self._redis.get(self.keys.current)
        if not ref:
            return
        try:
            await self.registry.follow(ref)
            self._failed = None
        except PolicyRefused as exc:
            if ref != self._failed:
                logger.error("cannot follow the published policy %r: %s", ref, exc)
            self._failed = ref

    async def run(self) -> None:
        """Follow the channel until cancelled; reconnect with back-off when Redis goes away."""
        backoff = 0.1
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.events)
                await self.sync()
                self.first_sync.set()
                if backoff > 0.1:
                    logger.info("policy follower reconnected to Redis")
                backoff = 0.1
                next_poll = loop.time() + self.poll_interval_s
                while True:
                    timeout = max(0.01, next_poll - loop.time())
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout)
                    if message is not None or loop.time() >= next_poll:
                        await self.sync()
                        next_poll = loop.time() + self.poll_interval_s
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                self.redis_errors.note("policy.follow")
                level = logging.WARNING if backoff == 0.1 else logging.DEBUG
                logger.log(level, "policy follower lost Redis (%s: %s); retrying in %.1f s",
                           type(exc).__name__, exc, backoff)
            except Exception:  # a bug must not end the follower: log it and start over
                logger.exception("policy follower failed; restarting it in %.1f s", backoff)
            finally:
                self.first_sync.set()  # tried once: start-up need not wait any longer
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(backoff)
            backoff = min(self.max_backoff_s, backoff * 2)

    async def close(self) -> None:
        """Close the Redis connections (when the follower opened them)."""
        if self._owns_client:
            with contextlib.suppress(Exception):
                await self._redis.aclose()


@asynccontextmanager
async def follow_published(
    registry: PolicyRegistry,
    settings: Settings,
    client: aioredis.Redis | None,
    redis_errors: RedisErrors | None = None,
) -> AsyncIterator[PolicyFollower | None]:
    """With a Redis ``client``, run a :class:`PolicyFollower` of ``registry`` while the context is
    open (and make it the registry's publisher); without, do nothing.

    On entry the published version (if any) is loaded before the context is entered (waiting at
    most ``ROUTER_POLICY_POLL_S`` + 2 seconds), so a replica started later serves it from its first
    request. Redis being unreachable does not stop or delay the start-up.
    """
    if client is None:
        yield None
        return
    follower = PolicyFollower(registry, client, settings.redis_prefix, poll_interval_s=settings.policy_poll_s,
                              redis_errors=redis_errors)
    registry.publisher = follower.publish
    task = asyncio.create_task(follower.run(), name="policy-follower")
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.first_sync.wait(), timeout=settings.policy_poll_s + 2.0)
        yield follower
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await follower.close()
