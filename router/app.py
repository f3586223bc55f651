"""The routing server (FastAPI). Run it with::

    uvicorn router.app:create_app --factory

Startup loads the policy (``ROUTER_CHECKPOINT``), loads and warms up the embedding model, and
opens the experience store (Redis when ``ROUTER_REDIS_URL`` is set, else SQLite). A checkpoint
that cannot be loaded, or bad settings, stop the server with a one-line error and a non-zero exit
code (uvicorn: 3). Startup also sets torch's intra-op threads of the process to
``ROUTER_TORCH_THREADS`` (default 1).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import torch
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, status
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from env.embedder import Embedder
from env.errors import UserError
from router.admin_agents import router as admin_agents_router
from router.admin_policy import router as admin_router
from router.auth import warn_if_open
from router.batcher import EmbedBatcher
from router.errors import install_error_handlers
from router.experience import ExperienceStore, StoreUnavailable, open_store
from router.limits import BodySizeLimitMiddleware
from router.load import LoadTracker, get_load_tracker, live_agent_infos, open_load_tracker
from router.logging import configure_logging
from router.metrics import ObservabilityMiddleware, RouterMetrics, annotate, metrics_api, note_decision
from router.registry import hot_swap
from router.schemas import (
    AgentInfo,
    ErrorResponse,
    FeedbackRequest,
    FeedbackResponse,
    HealthResponse,
    RouteRequest,
    RouteResponse,
)
from router.service import RoutingService
from router.settings import Settings
from training.checkpoint import Policy, load_checkpoint

logger = logging.getLogger(__name__)

_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": text}
    for code, text in (
        (400, "Malformed JSON body."),
        (422, "Invalid request."),
        (503, "Experience store unavailable; retry after Retry-After seconds."),
    )
}


# --- dependencies -------------------------------------------------------------------------
# They are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
# per dependency per request.


async def get_settings(request: Request) -> Settings:
    """The app's :class:`Settings`."""
    return request.app.state.settings


async def get_service(request: Request) -> RoutingService:
    """The :class:`RoutingService` of the served policy (hot-swapped by ``app.state.registry``).

    A handler gets it once, when the request starts, and uses that one reference to the end, so a
    request in flight during a swap finishes on the policy it started with.
    """
    return request.app.state.service


async def get_store(request: Request) -> ExperienceStore:
    """The open :class:`ExperienceStore`."""
    return request.app.state.store


async def get_batcher(request: Request) -> EmbedBatcher:
    """The app's micro-batching embedder (with its LRU cache)."""
    return request.app.state.batcher


# --- endpoints ----------------------------------------------------------------------------

api = APIRouter()


@api.post(
    "/v1/route",
    response_model=RouteResponse,
    responses={
        **_ERRORS,
        409: {"model": ErrorResponse, "description": "Every allowed agent is marked down (POST /admin/agents/...)."},
    },
    summary="Choose the agent for a prompt",
)
async def route(
    body: RouteRequest,
    request: Request,
    settings: Settings = Depends(get_settings),
    service: RoutingService = Depends(get_service),
    store: ExperienceStore = Depends(get_store),
    batcher: EmbedBatcher = Depends(get_batcher),
    load: LoadTracker = Depends(get_load_tracker),
) -> RouteResponse:
    """Embed the prompt, run the policy (masked to ``candidates``), persist the decision context,
    and return the chosen agent with the full distribution."""
    if len(body.prompt) > settings.max_prompt_chars:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"prompt has {len(body.prompt)} characters; the limit is {settings.max_prompt_chars}",
        )
    service.action_mask(body.candidates)  # bad candidates: 422 before any encoding
    embedding = await batcher.embed(service.embedder, body.prompt)  # micro-batched, LRU-cached
    live = await load.snapshot(service.agents)  # in-flight requests and agents down (router.load)
    decision = service.route(body.prompt, body.candidates, body.explore, embedding=embedding,
                             in_flight=live.in_flight, down=live.down,
                             explore_floor=settings.explore_floor)
    note_decision(request, decision.decision_id, decision.agent, service.version)
    await store.put_decision(
        service.decision_context(decision, body.prompt, body.session_id, store_prompt=settings.store_prompts)
    )
    await load.take(decision.agent, decision.decision_id)
    return RouteResponse(
        decision_id=decision.decision_id,
        agent=decision.agent,
        probabilities={
            name: float(p) for name, p in zip(service.agents, decision.probabilities, strict=True)
        },
        policy_version=service.version,
        propensity=decision.propensity,
    )


@api.post(
    "/v1/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackResponse,
    responses={
        **_ERRORS,
        404: {"model": ErrorResponse, "description": "Unknown or expired decision_id."},
        409: {"model": ErrorResponse, "description": "The decision already has feedback."},
    },
    summary="Report how the chosen agent did",
)
async def feedback(
    body: FeedbackRequest,
    request: Request,
    store: ExperienceStore = Depends(get_store),
    load: LoadTracker = Depends(get_load_tracker),
) -> FeedbackResponse:
    """Append the experience record (decision context + feedback); 202 only once it is durable."""
    annotate(request, decision_id=body.decision_id)
    record = await store.record_feedback(
        body.decision_id,
        {"quality": body.quality, "cost_usd": body.cost_usd, "latency_ms": body.latency_ms},
    )
    if isinstance(record.get("agent"), str):
        await load.release(record["agent"], body.decision_id)
    return FeedbackResponse(status="accepted", decision_id=body.decision_id)


@api.get("/v1/agents", response_model=list[AgentInfo], summary="The agents, in action order")
async def agents(
    service: RoutingService = Depends(get_service), load: LoadTracker = Depends(get_load_tracker)
) -> list[AgentInfo]:
    """Every agent of the served policy with its description, price and capacity when known, and
    its live state: requests in flight, the load the policy sees, and whether it is marked down."""
    return live_agent_infos(agent_infos(service.policy), service, await load.snapshot(service.agents))


@api.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz(service: RoutingService = Depends(get_service)) -> HealthResponse:
    """``ok`` and the served policy version."""
    return HealthResponse(status="ok", policy_version=service.version)


def agent_infos(policy: Policy) -> list[AgentInfo]:
    """One :class:`AgentInfo` per agent of ``policy``, from ``meta["agent_specs"]`` when present.

    An agent without a usable spec is listed by name only.
    """
    specs: dict[str, dict[str, Any]] = {}
    raw = policy.meta.get("agent_specs")
    if isinstance(raw, list):
        for spec in raw:
            if isinstance(spec, dict) and isinstance(spec.get("name"), str):
                specs[spec["name"]] = spec
    infos = []
    for name in policy.agents:
        try:
            infos.append(AgentInfo.model_validate({**specs.get(name, {}), "name": name}))
        except ValidationError:
            infos.append(AgentInfo(name=name))
    return infos


# --- startup ------------------------------------------------------------------------------


class _OneLineStartupErrors:
    """ASGI middleware: a :class:`UserError` raised at startup is reported as one line.

    Starlette sends the formatted traceback in ``lifespan.startup.failed`` (uvicorn logs it);
    this replaces it with ``cannot start: <message>`` and ends the lifespan cleanly.
    """

    def __init__(self, app: ASGIApp, failures: list[UserError]) -> None:
        self.app = app
        self.failures = failures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        reported = False

        async def send_one_line(message: Message) -> None:
            nonlocal reported
            if message["type"] == "lifespan.startup.failed" and self.failures:
                message = {"type": message["type"], "message": f"cannot start: {self.failures[-1]}"}
                reported = True
            await send(message)

        try:
            await self.app(scope, receive, send_one_line)
        except UserError:
            if not reported:
                raise


def _quiet_model_loading() -> None:
    """Silence the weight-loading progress bars of ``transformers`` (they clutter server logs)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover - sentence-transformers always brings it
        return
    hf_logging.disable_progress_bar()


def _start_policy(settings: Settings) -> RoutingService:
    torch.set_num_threads(settings.torch_threads)
    _quiet_model_loading()
    policy = load_checkpoint(settings.checkpoint)
    embedder = Embedder(
        model=policy.embedding_model, cache_dir=settings.embed_cache_dir, device=settings.device,
        batch_size=settings.encode_batch, progress=False,
    )
    service = RoutingService(policy, embedder)
    service.warm_up()
    return service


def _describe_settings_error(exc: ValidationError) -> str:
    """``"invalid settings: ROUTER_PORT: Input should be ...; ..."``."""
    parts = []
    for error in exc.errors():
        name = "ROUTER_" + "_".join(str(p) for p in error.get("loc", ())).upper()
        parts.append(f"{name}: {error.get('msg', 'invalid')}")
    return "invalid settings: " + "; ".join(parts)


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; nothing is loaded until its lifespan starts.

    Args:
        settings: the configuration; None reads :class:`Settings` from ``ROUTER_*`` environment
            variables now. Invalid variables are reported when the app starts (one line, as
            ``UserError``), so that ``uvicorn --factory`` prints no traceback.

    Returns:
        The FastAPI app. While it runs, ``app.state`` holds ``settings``, ``policy``,
        ``embedder``, ``service`` (:class:`RoutingService`), ``store``
        (:class:`ExperienceStore`), ``batcher`` (:class:`~router.batcher.EmbedBatcher`) and
        ``metrics`` (:class:`~router.metrics.RouterMetrics`, from creation on).

    Raises (at startup, from the lifespan):
        UserError: invalid settings; :class:`~training.checkpoint.CheckpointError` for a missing,
            corrupt or unfitting checkpoint; an embedding model that cannot be loaded; a
            malformed Redis URL or an SQLite file that cannot be opened.
    """
    settings_error: UserError | None = None
    if settings is None:
        try:
            settings = Settings()
        except ValidationError as exc:
            settings_error = UserError(_describe_settings_error(exc))
    failures: list[UserError] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if settings_error is not None:
                raise settings_error
            assert settings is not None
            configure_logging(settings.log_level, settings.log_format)
            service = await anyio.to_thread.run_sync(_start_policy, settings)
            try:
                store = await open_store(settings)
            except BaseException:
                if service.embedder.cache is not None:
                    service.embedder.cache.close()
                raise
        except UserError as exc:
            failures.append(exc)
            raise
        warn_if_open(settings.admin_token)
        try:
            await store.ping()
        except StoreUnavailable as exc:  # the server still starts; requests answer 503 meanwhile
            logger.warning("experience store not reachable yet: %s", exc)
        if settings.max_body_bytes < 6 * settings.max_prompt_chars + 4096:
            logger.warning("ROUTER_MAX_BODY_BYTES=%d may refuse (413) prompts under ROUTER_MAX_PROMPT_CHARS=%d "
                           "when their characters are JSON-escaped (6 bytes each)",
                           settings.max_body_bytes, settings.max_prompt_chars)
        metrics: RouterMetrics = app.state.metrics
        app.state.batcher = EmbedBatcher(
            window_ms=settings.batch_window_ms, max_batch=settings.max_batch, lru_size=settings.lru_size,
            on_batch=metrics.observe_batch, on_lookup=metrics.observe_lookup,
        )
        app.state.settings = settings
        app.state.policy = service.policy
        app.state.embedder = service.embedder
        app.state.service = service
        app.state.store = store
        app.state.load = open_load_tracker(settings.redis_url, settings.redis_prefix, settings.inflight_ttl_s)
        try:
            async with hot_swap(app.state, settings, service):
                yield
        finally:
            await app.state.batcher.aclose()
            await app.state.load.close()
            await store.close()
            if service.embedder.cache is not None:
                service.embedder.cache.close()

    app = FastAPI(
        title="agent-router",
        summary="Routes each prompt to the specialist LLM agent a learned (MAPPO) policy picks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.metrics = RouterMetrics()
    app.state.metrics.bind(app)
    body_limit = settings.max_body_bytes if settings is not None else Settings.model_fields["max_body_bytes"].default
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=body_limit)
    app.add_middleware(ObservabilityMiddleware, owner=app)
    app.add_middleware(_OneLineStartupErrors, failures=failures)
    install_error_handlers(app)
    app.include_router(api)
    app.include_router(metrics_api)
    app.include_router(admin_router)
    app.include_router(admin_agents_router)
    return app
