"""Hot swap of the served policy, and every replica following the version published in Redis.

:class:`PolicyRegistry` holds the :class:`~router.service.RoutingService` being served
(``current``) and the one before it (``previous``). A reload resolves a version name or path,
loads and validates the checkpoint in a worker thread (weights hash, tensor shapes and agent list
by :func:`~training.checkpoint.load_checkpoint`; the embedding model; a smoke forward pass with
finite probabilities summing to 1), and only then swaps one reference, on the event loop. A
request handler takes the service reference once, when it starts, and uses it to the end, so
in-flight requests finish on the policy they started with. A checkpoint that fails any check is
refused with a :class:`PolicyRefused` and the old policy keeps serving.

With Redis (``ROUTER_REDIS_URL``), :class:`PolicyFollower` keeps every replica on one version:

- ``<prefix>:policy:current`` (string): the published checkpoint, a version name (a directory of
  the checkpoint root) or, for a checkpoint outside the root, its absolute path;
- ``<prefix>:policy:events`` (pub/sub channel): a message (the same string) on every publish.

An admin reload or rollback on any replica validates locally, then SETs the key and PUBLISHes
(one MULTI), then swaps. Every replica subscribes to the channel; on a message it re-reads the key
(the key is the truth, so the last publish wins), loads off the request path and swaps. It also
reads the key on start-up, after every reconnect and every ``ROUTER_POLICY_POLL_S`` seconds, so a
replica started later or one that missed a message converges. Redis going away is logged and
retried with back-off; the replica keeps serving its current policy meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import redis.asyncio as aioredis
import torch
from redis.exceptions import RedisError

from env.embedder import canonical_model_id
from env.errors import UserError
from router.experience.base import utc_now_iso
from router.service import RoutingService
from router.settings import Settings
from training.checkpoint import META, CheckpointError, Policy, load_checkpoint, resolve_checkpoint

logger = logging.getLogger(__name__)

CURRENT_KEY = "policy:current"
EVENTS_CHANNEL = "policy:events"


class PolicyRefused(UserError):
    """A checkpoint that cannot replace the served policy (corrupt, unfitting, non-finite output).

    Attributes:
        status_code: the HTTP status the admin endpoints answer with.
    """

    status_code = 422


class UnknownVersion(PolicyRefused):
    """No checkpoint under that version name or path."""

    status_code = 404


class NoPreviousPolicy(PolicyRefused):
    """A rollback with no previous policy in this process."""

    status_code = 409


class PublishFailed(Exception):
    """The new version could not be published to Redis; nothing was swapped."""


def smoke_check(policy: Policy, embed_dim: int, samples: int = 4) -> None:
    """Run the policy on random unit embeddings (zero and random load) and check its output.

    Raises:
        PolicyRefused: the forward pass fails, or the probabilities are not finite, negative, or
            do not sum to 1 (within 1e-4).
    """
    generator = torch.Generator().manual_seed(0)
    embedding = torch.randn(samples, embed_dim, generator=generator)
    embedding = embedding / embedding.norm(dim=-1, keepdim=True)
    k = len(policy.agents)
    clip = float(policy.meta["obs_layout"].get("load_clip", 1.0) or 1.0)
    load = torch.rand(samples, k, generator=generator) * clip
    load[0] = 0.0
    try:
        probs = policy.probabilities(policy.build_obs(embedding, load))
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:
        raise PolicyRefused(f"{policy.path}: the smoke forward pass failed: {exc}") from None
    if tuple(probs.shape) != (samples, 1, k):
        raise PolicyRefused(f"{policy.path}: the policy gives probabilities of shape {tuple(probs.shape)}, "
                            f"expected {(samples, 1, k)}")
    if not bool(torch.isfinite(probs).all()):
        raise PolicyRefused(f"{policy.path}: the policy gives non-finite probabilities (NaN or inf weights?)")
    sums = probs.sum(dim=-1)
    if bool((probs < 0).any()) or not bool(torch.allclose(sums, torch.ones_like(sums), atol=1e-4)):
        raise PolicyRefused(f"{policy.path}: the policy's probabilities do not form a distribution "
                            f"(sums {sums.flatten().tolist()})")


class PolicyRegistry:
    """The served :class:`RoutingService` and the previous one; loads, validates and swaps.

    Args:
        service: the service started with (already warmed up: its embedder fits its policy).
        checkpoint: ``ROUTER_CHECKPOINT``: a directory of versions, or one version directory
            (then its parent is where version names are looked up).
        make_service: builds the service of a newly loaded policy; default
            ``RoutingService(policy, service.embedder)`` (the embedder is shared).
        state: an object (the app's ``state``) whose ``service`` and ``policy`` attributes are
            set to the current ones on every swap; None: none.

    Attributes:
        current: the service new requests use. Read it once per request.
        previous: the service served before ``current``; None until the first swap.
        loaded_at: ISO 8601 UTC time ``current`` started serving here.
        publisher: ``async publisher(ref)`` that publishes a version to the other replicas
            (raises :class:`PublishFailed`); None: single process, nothing published.
    """

    def __init__(
        self,
        service: RoutingService,
        checkpoint: str | Path,
        make_service: Callable[[Policy], RoutingService] | None = None,
        state: Any = None,
    ) -> None:
        self.current = service
        self.previous: RoutingService | None = None
        self.loaded_at = utc_now_iso()
        self.previous_loaded_at: str | None = None
        checkpoint = Path(checkpoint)
        self.root = (checkpoint.parent if (checkpoint / META).is_file() else checkpoint).resolve()
        self.embedder = service.embedder
        self.embed_dim = service.embed_dim
        self._make_service = make_service or (lambda policy: RoutingService(policy, self.embedder))
        self._state = state
        self._lock = asyncio.Lock()
        self.publisher: Callable[[str], Awaitable[None]] | None = None
        self._mirror()

    # --- resolving and validating (worker thread) ------------------------------------------

    def resolve(self, ref: str | None) -> Path:
        """The version directory ``ref`` names (resolved, absolute).

        Args:
            ref: None or empty: the newest version under ``ROUTER_CHECKPOINT``; a bare name: the
                version of that name in the checkpoint root; else a path (a version directory,
                or a directory of versions: its newest).

        Raises:
            UnknownVersion: nothing loadable there.
        """
        if not ref:
            target = self.root
        elif "/" not in ref and "\\" not in ref and ref not in (".", ".."):
            target = self.root / ref
            if not (target / META).is_file():
                known = sorted(p.name for p in self.root.iterdir()
                               if not p.name.startswith(".") and (p / META).is_file()) if self.root.is_dir() else []
                shown = ", ".join(known[-10:]) or "none"
                raise UnknownVersion(f"unknown policy version {ref!r} in {self.root} (versions there: {shown})")
        else:
            target = Path(ref).expanduser()
        try:
            return resolve_checkpoint(target).resolve()
        except CheckpointError as exc:
            raise UnknownVersion(str(exc)) from None

    def ref_for(self, directory: Path) -> str:
        """What is published for ``directory``: its name when it is in the checkpoint root, else its path."""
        directory = Path(directory).resolve()
        return directory.name if directory.parent == self.root else str(directory)

    def prepare(self, directory: Path) -> RoutingService:
        """Load and validate the checkpoint at ``directory``; a service ready to swap in.

        Checks: weights hash, tensor shapes and agent list (the served ones, names and order);
        the embedding model and width of the shared embedder; a smoke forward pass.

        Raises:
            PolicyRefused: any check fails (the message says what, and that the old policy keeps
                serving).
        """
        serving = self.current
        try:
            policy = load_checkpoint(directory, expect_agents=serving.agents)
            model = canonical_model_id(policy.embedding_model)
            if model != self.embedder.model_id:
                raise PolicyRefused(f"{directory}: the policy embeds prompts with {model}, but this server's "
                                    f"embedder is {self.embedder.model_id}; that change needs a restart")
            service = self._make_service(policy)
            if service.embed_dim != self.embed_dim:
                raise PolicyRefused(f"{directory}: the policy expects {service.embed_dim}-dim embeddings, "
                                    f"the embedder gives {self.embed_dim}")
            smoke_check(policy, self.embed_dim)
        except (PolicyRefused, CheckpointError) as exc:
            raise PolicyRefused(f"refused: {exc}; still serving {serving.version}") from None
        except (KeyError, TypeError, ValueError) as exc:  # metadata that loads but does not fit
            raise PolicyRefused(f"refused: {directory}: unusable metadata ({type(exc).__name__}: {exc}); "
                                f"still serving {serving.version}") from None
        return service

    def _known(self, directory: Path) -> RoutingService | None:
        """``current`` or ``previous`` when it was loaded from ``directory`` and that checkpoint is
        unchanged on disk (same weights hash in its ``policy.json``); else None."""
        for service in (self.current, self.previous):
            if service is None or Path(service.policy.path).resolve() != directory:
                continue
            try:
                meta = json.loads((directory / META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            if isinstance(meta, dict) and meta.get("weights_sha256") == service.policy.meta.get("weights_sha256"):
                return service
        return None

    # --- swapping (event loop) ------------------------------------------------------------

    def _mirror(self) -> None:
        if self._state is not None:
            self._state.service = self.current
            self._state.policy = self.current.policy

    def _swap(self, service: RoutingService, source: str) -> bool:
        """Make ``service`` current (one reference assignment); False when it already is."""
        if service is self.current:
            return False
        old = self.current
        self.previous, self.previous_loaded_at = old, self.loaded_at
        self.current, self.loaded_at = service, utc_now_iso()
        self._mirror()
        logger.info("policy %s -> %s (%s)", old.version, service.version, source)
        return True

    async def _obtain(self, ref: str | None) -> tuple[Path, RoutingService]:
        directory = await anyio.to_thread.run_sync(self.resolve, ref)
        known = await anyio.to_thread.run_sync(self._known, directory)
        if known is not None:
            return directory, known
        return directory, await anyio.to_thread.run_sync(self.prepare, directory)

    async def reload(self, ref: str | None = None) -> RoutingService:
        """Load ``ref`` (see :meth:`resolve`), validate it, publish it, swap it in.

        Reloading the version already served re-publishes it and changes nothing here.

        Returns:
            The service now current.

        Raises:
            UnknownVersion: no checkpoint there.
            PolicyRefused: the checkpoint fails validation.
            PublishFailed: Redis did not take the new version (nothing was swapped).
        """
        async with self._lock:
            directory, service = await self._obtain(ref)
            if self.publisher is not None:
                await self.publisher(self.ref_for(directory))
            self._swap(service, "reload")
            return self.current

    async def rollback(self) -> RoutingService:
        """Swap back to the previous policy (and publish it).

        Returns:
            The service now current (the one that was previous).

        Raises:
            NoPreviousPolicy: this process has served only one policy.
            PublishFailed: Redis did not take it (nothing was swapped).
        """
        async with self._lock:
            target = self.previous
            if target is None:
                raise NoPreviousPolicy(f"no previous policy to roll back to; serving {self.current.version}, "
                                       "the only policy this process has served")
            if self.publisher is not None:
                await self.publisher(self.ref_for(Path(target.policy.path)))
            self._swap(target, "rollback")
            return self.current

    async def follow(self, ref: str) -> bool:
        """Serve the version published as ``ref`` (a replica following Redis); nothing is published.

        Returns:
            True when the served policy changed.

        Raises:
            UnknownVersion, PolicyRefused: as :meth:`reload`; the old policy keeps serving.
        """
        async with self._lock:
            _, service = await self._obtain(ref)
            return self._swap(service, f"published {ref}")


class PolicyFollower:
    """Publishes versions to Redis and keeps a :class:`PolicyRegistry` on the published one.

    Args:
        registry: the registry to keep in step.
        url: Redis URL.
        prefix: key prefix (``<prefix>:policy:current``, ``<prefix>:policy:events``).
        poll_interval_s: how often the key is re-read besides the messages.
        max_backoff_s: longest wait between reconnection attempts.

    Raises:
        ValueError: ``url`` is not a Redis URL.
    """

    def __init__(
        self,
        registry: PolicyRegistry,
        url: str,
        prefix: str,
        poll_interval_s: float = 2.0,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.registry = registry
        self.key = f"{prefix}:{CURRENT_KEY}"
        self.channel = f"{prefix}:{EVENTS_CHANNEL}"
        self.poll_interval_s = poll_interval_s
        self.max_backoff_s = max_backoff_s
        self._redis = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=2.0, socket_timeout=5.0
        )
        self._failed: str | None = None
        self.first_sync = asyncio.Event()

    async def publish(self, ref: str) -> None:
        """``SET <key> ref`` and ``PUBLISH <channel> ref`` in one transaction.

        Raises:
            PublishFailed: Redis is unreachable or refused.
        """
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(self.key, ref)
                pipe.publish(self.channel, ref)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise PublishFailed(f"could not publish policy {ref!r} to Redis ({type(exc).__name__}: {exc})") from None

    async def sync(self) -> None:
        """Read the key and serve what it names; a refused version is logged (once) and skipped.

        Raises:
            RedisError, OSError: Redis is unreachable.
        """
        ref = await self._redis.get(self.key)
        if not ref:
            return
        try:
            await self.registry.follow(ref)
            self._failed = None
        except UserError as exc:
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
                await pubsub.subscribe(self.channel)
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
        """Close the Redis connections."""
        with contextlib.suppress(Exception):
            await self._redis.aclose()


@asynccontextmanager
async def hot_swap(
    state: Any,
    settings: Settings,
    service: RoutingService,
    make_service: Callable[[Policy], RoutingService] | None = None,
) -> AsyncIterator[PolicyRegistry]:
    """Set ``state.registry`` and, with Redis, run the follower while the context is open.

    On entry with Redis, the published version (if any) is loaded before the context is entered
    (waiting at most ``ROUTER_POLICY_POLL_S`` + 2 seconds), so a replica started later serves it from
    its first request. Redis being unreachable does not stop or delay the start-up.
    """
    registry = PolicyRegistry(service, settings.checkpoint, make_service=make_service, state=state)
    state.registry = registry
    if not settings.redis_url:
        yield registry
        return
    follower = PolicyFollower(registry, settings.redis_url, settings.redis_prefix,
                              poll_interval_s=settings.policy_poll_s)
    registry.publisher = follower.publish
    task = asyncio.create_task(follower.run(), name="policy-follower")
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(follower.first_sync.wait(), timeout=settings.policy_poll_s + 2.0)
        yield registry
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await follower.close()

