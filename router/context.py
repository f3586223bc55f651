"""The app's context: everything a request handler needs, built once in the lifespan.

:func:`open_context` starts the policy and the embedding model, opens the shared state
(:func:`open_shared_state`: Redis or local, decided there once for the experience store, the live
load, the cooldowns and the key spending; the one Redis client is also the policy follower's), and
closes everything in reverse order when the app stops.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import anyio
import redis.asyncio as aioredis
import torch

from contract.errors import UserError
from env.embedder import Embedder
from env.encoders import check_vectors, make_embedder
from experience import ExperienceStore, StoreUnavailable
from experience.agent_changes import AgentChanges, open_agent_changes
from experience.backend import open_store
from experience.redis_client import RedisErrors, open_redis
from policy.artefact import Policy
from policy.checkpoint import load_checkpoint
from policy.onnx_head import decision_head
from router.batcher import EmbedBatcher
from router.cooldown import CooldownPolicy, Cooldowns, LocalCooldowns, RedisCooldowns
from router.encode_plan import PlanStore, planned_encoder, planned_pass_size
from router.follower import follow_published
from router.inflight import LoadTracker, LocalLoadTracker, RedisLoadTracker
from router.metrics import RouterMetrics
from router.proxy.attempts import Proxy
from router.proxy.client import UpstreamClient
from router.proxy.keys import KeySpend, LocalKeySpend, RedisKeySpend
from router.registry import PolicyRegistry
from router.routing import Router
from router.service import RoutingService
from router.settings import Settings
from router.upstreams import load_upstreams, policy_prices

logger = logging.getLogger(__name__)


@dataclass
class AppContext:
    """What the request handlers share (``app.state.context``; handlers get it through
    :mod:`router.deps`).

    Attributes:
        settings: the server's settings.
        registry: the served policy (``registry.current``) and hot swap.
        store: the experience log.
        load: in-flight leases and agents down.
        batcher: the micro-batching embedder.
        metrics: the app's Prometheus metrics.
        redis: the shared Redis client; None without Redis.
        redis_errors: failed Redis calls by operation, of every user of ``redis``.
        cooldowns: agents whose feedback quality collapsed (:mod:`router.cooldown`).
        agent_changes: the agent set's pending changes (:mod:`experience.agent_changes`).
        router: the routing capability both endpoints call (:class:`router.routing.Router`).
        proxy: the OpenAI-compatible proxy's upstreams, client and key spending; None without
            ``ROUTER_UPSTREAMS_FILE``.
    """

    settings: Settings
    registry: PolicyRegistry
    store: ExperienceStore
    load: LoadTracker
    batcher: EmbedBatcher
    metrics: RouterMetrics
    redis: aioredis.Redis | None
    redis_errors: RedisErrors
    cooldowns: Cooldowns
    agent_changes: AgentChanges
    router: Router
    proxy: Proxy | None = None

    @property
    def service(self) -> RoutingService:
        """The service of the policy served now (read once per request)."""
        return self.registry.current


def _quiet_model_loading() -> None:
    """Silence the weight-loading progress bars of ``transformers`` (they clutter server logs)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings it
        return
    hf_logging.disable_progress_bar()


def default_encoder(policy: Policy) -> tuple[str, str]:
    """The encoder that serves ``policy`` when ``ROUTER_ENCODER`` is unset, and why: the one chosen
    when it was trained (``policy.json`` ``embedding.serving``, :mod:`training.serving_encoder`), else
    static for a policy trained on static embeddings, else torch."""
    embedding = policy.meta.embedding
    if embedding.encoder == "static":
        return "static", "the policy was trained on static embeddings"
    serving = embedding.serving
    if serving is None:
        return "torch", "the policy records no serving encoder"
    kept = 100 * serving.agreement.get(serving.encoder, 1.0)
    return serving.encoder, (f"the policy's choice at training: the fastest that kept at least "
                             f"{100 * serving.min_agreement:g}% of its {serving.prompts} validation decisions "
                             f"({kept:.1f}%); pin another with ROUTER_ENCODER")


def make_service(policy: Policy, embedder: Embedder, settings: Settings) -> RoutingService:
    """The service of ``policy`` (blocking): its decision in ONNX Runtime when
    ``ROUTER_POLICY_RUNTIME=auto`` and the export matches torch, else in torch; the log says which."""
    head, how = None, "torch (ROUTER_POLICY_RUNTIME=torch)"
    if settings.policy_runtime == "auto":
        head, how = decision_head(policy, settings.onnx_dir / "heads")
    logger.info("policy %s decides in %s", policy.version, how)
    return RoutingService(policy, embedder, head=head)


def start_policy(settings: Settings) -> RoutingService:
    """Load the checkpoint and the embedding model, and route one prompt (blocking).

    Raises:
        UserError: the checkpoint or the embedding model cannot be loaded, or they do not fit.
    """
    torch.set_num_threads(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000.0)
    policy = load_checkpoint(settings.checkpoint)

    def build(encoder: str) -> Embedder:
        return make_embedder(
            encoder, model=policy.embedding_model, cache_dir=settings.embed_cache_dir, device=settings.device,
            batch_size=8 if settings.encode_batch == "auto" else settings.encode_batch, progress=False,
            onnx_dir=settings.onnx_dir, threads=settings.torch_threads, static_dir=settings.static_dir, log=logger,
            static_version=policy.meta.embedding.distillation, trace_dir=settings.trace_dir,
        )

    plans = PlanStore(settings.plan_dir)
    trained = policy.meta.embedding.encoder
    if settings.encoder is None:
        encoder, why = default_encoder(policy)
        logger.info("ROUTER_ENCODER unset: %s, %s", encoder, why)
    else:
        encoder = settings.encoder
        logger.info("ROUTER_ENCODER=%s: pinned", encoder)
    check_vectors(trained, encoder, f"policy {policy.version}")
    if encoder == "torch" and settings.device != "cpu":  # on the CPU torch runs a trace, without transformers
        _quiet_model_loading()
    embedder = build("onnx-int8" if encoder == "onnx" else encoder)
    if encoder == "onnx" and embedder.encoder == "onnx-int8":  # else no int8 kernels: fp32 already
        int8, fp32 = embedder, build("onnx-fp32")
        embedder = planned_encoder([int8, fp32], plans)  # the faster export on this CPU
        loser = fp32 if embedder is int8 else int8
        if loser.cache is not None:
            loser.cache.close()
    service = make_service(policy, embedder, settings)
    service.warm_up()
    describe = getattr(embedder, "describe", None)
    logger.info("embedding encoder: %s", describe() if describe is not None else embedder.encoder)
    if settings.encode_batch == "auto":
        planned_pass_size(embedder, plans)
    return service


@dataclass
class SharedState:
    """What every replica shares through Redis, or this process keeps alone without it.

    Attributes:
        redis: the one Redis client, or None.
        store: the experience log (Redis streams with the outbox, or SQLite).
        load: in-flight leases and agents down.
        cooldowns: agents whose feedback quality collapsed.
        spend: each client key's spending.
        agent_changes: the agent set's pending changes.
    """

    redis: aioredis.Redis | None
    store: ExperienceStore
    load: LoadTracker
    cooldowns: Cooldowns
    spend: KeySpend
    agent_changes: AgentChanges


async def open_shared_state(settings: Settings, metrics: RouterMetrics, errors: RedisErrors,
                            stack: contextlib.AsyncExitStack) -> SharedState:
    """Redis or local, decided here once for every shared state (``ROUTER_REDIS_URL``); what it
    opens is closed by ``stack``.

    Raises:
        UserError: a malformed Redis URL, or a store that cannot be opened.
    """
    policy = CooldownPolicy(quality=settings.cooldown_quality, window=settings.cooldown_window,
                            min_feedback=settings.cooldown_min_feedback,
                            probe_feedback=settings.cooldown_probe_feedback, seconds=settings.cooldown_s,
                            false_alarm=settings.cooldown_false_alarm)
    client = None
    if settings.redis_url:
        try:
            client = open_redis(settings.redis_url)
        except ValueError as exc:
            raise UserError(f"ROUTER_REDIS_URL: {exc}") from None
        stack.push_async_callback(client.aclose)
    store = await open_store(client, prefix=settings.redis_prefix, stream_maxlen=settings.stream_maxlen,
                             decision_ttl_s=settings.decision_ttl_s, outbox_path=settings.outbox_path,
                             sqlite_path=settings.sqlite_path, sqlite_decision_sync=settings.sqlite_decision_sync,
                             redis_errors=errors)
    stack.push_async_callback(store.close)
    changes = open_agent_changes(settings.redis_url, prefix=settings.redis_prefix, sqlite_path=settings.sqlite_path)
    stack.callback(changes.close)
    if client is not None:
        prefix = settings.redis_prefix
        load: LoadTracker = RedisLoadTracker(client, prefix, settings.inflight_ttl_s, redis_errors=errors)
        shared = SharedState(client, store, load, RedisCooldowns(client, prefix, policy, errors, metrics.note_cooldown),
                             RedisKeySpend(client, prefix, errors), changes)
    else:
        shared = SharedState(None, store, LocalLoadTracker(settings.inflight_ttl_s),
                             LocalCooldowns(policy, metrics.note_cooldown), LocalKeySpend(), changes)
    stack.push_async_callback(shared.load.close)
    return shared


@asynccontextmanager
async def open_context(settings: Settings, metrics: RouterMetrics) -> AsyncIterator[AppContext]:
    """Start everything the app serves with; close it all on exit.

    Raises:
        UserError: as :func:`start_policy`, a malformed Redis URL, or a store that cannot be opened.
    """
    service = await anyio.to_thread.run_sync(start_policy, settings)
    errors = RedisErrors()
    async with contextlib.AsyncExitStack() as stack:
        if service.embedder.cache is not None:
            stack.callback(service.embedder.cache.close)
        shared = await open_shared_state(settings, metrics, errors, stack)
        try:
            await shared.store.ping()
        except StoreUnavailable as exc:  # the server still starts; requests answer 503 meanwhile
            logger.warning("experience store not reachable yet: %s", exc)
        threads = settings.resolved_encode_threads()
        logger.info("encode threads: %d", threads)
        batcher = EmbedBatcher(window_ms=settings.batch_window_ms, max_batch=settings.max_batch,
                               lru_size=settings.lru_size, threads=threads, on_batch=metrics.observe_batch,
                               on_lookup=metrics.observe_lookup, inline_ms=settings.inline_encode_ms)
        stack.push_async_callback(batcher.aclose)
        registry = PolicyRegistry(service, settings.checkpoint,
                                  make_service=lambda policy: make_service(policy, service.embedder, settings))
        await stack.enter_async_context(follow_published(registry, settings, shared.redis, errors))
        proxy = None
        if settings.upstreams_file is not None:
            proxy = Proxy(upstreams=load_upstreams(settings.upstreams_file, service.agents,
                                                    policy_prices(service.policy.meta.agent_specs)),
                          client=UpstreamClient(settings.upstream_connect_timeout_s,
                                                settings.upstream_first_token_timeout_s),
                          spend=shared.spend)
            stack.push_async_callback(proxy.client.aclose)
            logger.info("proxying %d agents: %s", len(proxy.upstreams), ", ".join(proxy.upstreams))
        router = Router(settings, registry, shared.store, shared.load, shared.cooldowns, batcher, metrics)
        yield AppContext(settings=settings, registry=registry, store=shared.store, load=shared.load,
                         batcher=batcher, metrics=metrics, redis=shared.redis, redis_errors=errors,
                         cooldowns=shared.cooldowns, agent_changes=shared.agent_changes, router=router, proxy=proxy)
