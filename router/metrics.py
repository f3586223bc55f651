"""Prometheus metrics of one app, served at ``GET /metrics`` (text exposition format).

Every app gets its own :class:`~prometheus_client.CollectorRegistry` (created by
:class:`RouterMetrics` in ``create_app``), so several apps in one process do not collide and
nothing is registered at import time.

================================================  ==========  ======================================
metric                                            type        labels / source
================================================  ==========  ======================================
``router_http_requests_total``                    counter     ``method``, ``endpoint`` (route
                                                              template), ``status``
``router_http_request_duration_seconds``          histogram   ``method``, ``endpoint``, ``status``
``router_decisions_total``                        counter     ``agent``
``router_explored_decisions_total``               counter     ``agent``: decisions sampled by
                                                              ``explore`` to another agent than the
                                                              policy's most probable one
``router_feedback_quality``                       histogram   ``agent``, ``explored`` (``true`` /
                                                              ``false``): each feedback's quality;
                                                              greedy minus explored mean quality is
                                                              exploration's cost
``router_policy_info``                            info        ``version`` of the served policy, read
                                                              at scrape time (follows hot swap)
``router_outbox_depth``                           gauge       the store's ``outbox_depth()`` at
                                                              scrape time; 0 without an outbox
``router_redis_errors_total``                     counter     ``operation``: failed Redis calls of
                                                              the store, the load tracker
                                                              (``load.*``) and the policy follower
                                                              (``policy.*``), one shared tally
``router_embed_batch_size``                       histogram   prompts per encode call
``router_embed_batch_duration_seconds``           histogram   seconds per encode call
``router_embed_cache_lookups_total``              counter     ``result``: ``hit`` / ``miss``
``router_decision_stage_duration_seconds``        histogram   ``stage``: seconds of each stage of a
                                                              decision (embed, encode, state,
                                                              policy, store, lease)
``router_embed_cache_entries``                    gauge       prompts in the LRU cache
``router_agent_cooldowns_total``                  counter     ``agent``: cooldowns this replica
                                                              started (router.cooldown)
``router_agent_cooldown_seconds``                 gauge       ``agent``: seconds left, agents
                                                              cooling down now (all replicas)
``router_retrain_last_round_info``                info        ``status``, ``published`` version,
                                                              ``verdict`` of the last retraining
                                                              round (Redis, ``retrain --every``)
``router_retrain_round``                          gauge       that round's index
``router_retrain_estimated_value``                gauge       ``policy``, ``estimator`` (``dr``,
                                                              ``snips``) on held-out logged data
``router_retrain_effective_samples``              gauge       ``policy``
================================================  ==========  ======================================

Paths that match no route are counted under ``endpoint="unmatched"`` (no unbounded label values).
:class:`ObservabilityMiddleware` also writes one structured log line per request
(:mod:`router.logging`), with the fields the handlers attached via :func:`annotate`. The values
read at scrape time come from the app's :class:`~router.context.AppContext` (``app.state.context``).
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import math
import time
import weakref
from collections.abc import Iterator
from typing import Any

from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from policy.versions import VersionKeys
from router.logging import ACCESS_LOGGER

logger = logging.getLogger(__name__)
access_logger = logging.getLogger(ACCESS_LOGGER)

#: Scope key of the log fields a handler attaches to its request (see :func:`annotate`).
LOG_FIELDS_KEY = "agent_router.log"
UNMATCHED = "unmatched"
#: Endpoints whose request lines are logged at DEBUG rather than INFO (probes and scrapes).
QUIET_ENDPOINTS = frozenset({"/metrics", "/healthz", "/readyz"})

#: Buckets of ``router_feedback_quality`` (quality is in [0, 1]).
QUALITY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: a decision's stages take from tens of µs (the lease) to the encoder's tens of ms
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
OUTBOX_TIMEOUT_S = 1.0


class RouterMetrics:
    """The metrics of one app, in their own registry.

    Attributes:
        registry: the app's ``CollectorRegistry``.
        requests, latency: HTTP requests and their duration by method, endpoint and status.
        decisions: routing decisions by chosen agent.
        embed_batch_size, embed_batch_seconds: per encode call of the micro-batcher.
        embed_cache: LRU lookups by result (``hit`` / ``miss``).
        decision_stage_seconds: seconds of each stage of each decision (``router.routing.Router.decide``).
        proxy_calls, proxy_cost, proxy_tokens: the proxy's upstream calls, USD and tokens per client key.
        proxy_upstream_seconds, proxy_first_token_seconds: duration and time to first token per agent.
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter(
            "router_http_requests", "HTTP requests answered, by route template, method and status.",
            ["method", "endpoint", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "router_http_request_duration_seconds", "Time from request start to the last response byte.",
            ["method", "endpoint", "status"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.decisions = Counter(
            "router_decisions", "Routing decisions, by chosen agent.", ["agent"], registry=self.registry
        )
        self.explored = Counter(
            "router_explored_decisions", "Decisions sampled by explore to another agent than the policy's most "
            "probable one, by chosen agent.", ["agent"], registry=self.registry,
        )
        self.feedback_quality = Histogram(
            "router_feedback_quality", "Quality reported by POST /v1/feedback, by agent and whether the decision "
            "explored.", ["agent", "explored"], buckets=QUALITY_BUCKETS, registry=self.registry,
        )
        self.embed_batch_size = Histogram(
            "router_embed_batch_size", "Prompts embedded per encode call (micro-batching).",
            buckets=BATCH_BUCKETS, registry=self.registry,
        )
        self.embed_batch_seconds = Histogram(
            "router_embed_batch_duration_seconds", "Seconds per encode call (micro-batching).",
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.embed_cache = Counter(
            "router_embed_cache_lookups", "Prompt embedding LRU lookups, by result (hit, miss).",
            ["result"], registry=self.registry,
        )
        self.decision_stage_seconds = Histogram(
            "router_decision_stage_duration_seconds", "Seconds of each stage of a routing decision (embed, encode, "
            "state, policy, store, lease).", ["stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self.cooldowns = Counter(
            "router_agent_cooldowns", "Cooldowns started by this replica, by agent (router.cooldown).",
            ["agent"], registry=self.registry,
        )
        self.proxy_calls = Counter(
            "router_proxy_calls", "Upstream calls of POST /v1/chat/completions (every attempt), by client key, agent "
            "and outcome (ok, error, timeout, cancelled).", ["key", "agent", "outcome"], registry=self.registry,
        )
        self.proxy_cost = Counter(
            "router_proxy_cost_usd", "USD of proxied calls, by client key.", ["key"], registry=self.registry,
        )
        self.proxy_tokens = Counter(
            "router_proxy_tokens", "Tokens of proxied calls, by client key and kind (prompt, completion).",
            ["key", "kind"], registry=self.registry,
        )
        self.proxy_upstream_seconds = Histogram(
            "router_proxy_upstream_duration_seconds", "Seconds of each upstream call, by agent.", ["agent"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.proxy_first_token_seconds = Histogram(
            "router_proxy_time_to_first_token_seconds", "Seconds to the first streamed chunk, by agent.", ["agent"],
            buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self._hit = self.embed_cache.labels(result="hit")
        self._miss = self.embed_cache.labels(result="miss")
        self.outbox_depth: float = 0.0
        #: the last retraining round's figures (:attr:`policy.versions.VersionKeys.last_round`), or None
        self.retrain_round: dict[str, Any] | None = None
        #: agents cooling down at the last scrape -> seconds left
        self.cooling: dict[str, float] = {}
        self._state: _StateCollector | None = None

    def bind(self, app: FastAPI) -> None:
        """Export the values read from the app's context at scrape time (policy, outbox, Redis errors)."""
        if self._state is None:
            self._state = _StateCollector(app, self)
            self.registry.register(self._state)

    # hooks of the micro-batcher
    def observe_batch(self, size: int, seconds: float) -> None:
        self.embed_batch_size.observe(size)
        self.embed_batch_seconds.observe(seconds)

    def observe_stages(self, seconds: dict[str, float]) -> None:
        """One decision's stages, ``{stage: seconds}``."""
        for stage, value in seconds.items():
            self.decision_stage_seconds.labels(stage=stage).observe(value)

    def observe_decision(self, agent: str, explored: bool) -> None:
        """Count a decision; ``explored``: sampled to another agent than the most probable one."""
        self.decisions.labels(agent=agent).inc()
        if explored:
            self.explored.labels(agent=agent).inc()

    def observe_feedback(self, agent: str, quality: float, explored: bool) -> None:
        self.feedback_quality.labels(agent=agent, explored="true" if explored else "false").observe(quality)

    def note_cooldown(self, agent: str) -> None:
        self.cooldowns.labels(agent=agent).inc()

    def observe_lookup(self, hit: bool) -> None:
        (self._hit if hit else self._miss).inc()

    async def refresh(self, app: FastAPI) -> None:
        """Read the values that need awaiting (the outbox depth, the last retraining round) before a scrape."""
        context = getattr(app.state, "context", None)
        client = getattr(context, "redis", None)
        if client is not None:
            try:
                raw = await asyncio.wait_for(client.get(VersionKeys(context.settings.redis_prefix).last_round),
                                             OUTBOX_TIMEOUT_S)
                self.retrain_round = json.loads(raw) if raw else None
            except Exception as exc:  # the scrape still answers without the round's figures
                logger.warning("cannot read the last retraining round: %s", exc)
                context.redis_errors.note("metrics.retrain_round")
        cooldowns, registry = getattr(context, "cooldowns", None), getattr(context, "registry", None)
        if cooldowns is not None and registry is not None:
            self.cooling = dict(await cooldowns.cooling(registry.current.agents))
        store = getattr(context, "store", None)
        depth_of = getattr(store, "outbox_depth", None)
        if depth_of is None:
            self.outbox_depth = 0.0
            return
        try:
            depth = depth_of()
            if inspect.isawaitable(depth):
                depth = await asyncio.wait_for(depth, OUTBOX_TIMEOUT_S)
            self.outbox_depth = float(depth)
        except Exception as exc:  # the scrape still answers; the gauge says "unknown"
            logger.warning("cannot read the outbox depth: %s", exc)
            self.outbox_depth = math.nan

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Reads the served policy version, outbox depth, Redis errors and LRU size at scrape time."""

    def __init__(self, app: FastAPI, metrics: RouterMetrics) -> None:
        self._app = weakref.ref(app)
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        app = self._app()
        context = getattr(app.state, "context", None) if app is not None else None
        info = InfoMetricFamily("router_policy", "The policy being served (follows hot swaps).")
        if context is not None:
            info.add_metric([], {"version": str(context.registry.current.version)})
        yield info
        yield GaugeMetricFamily(
            "router_outbox_depth", "Experience records waiting in the outbox (0 without an outbox).",
            value=self._metrics.outbox_depth,
        )
        errors = dict(context.redis_errors) if context is not None else {}
        family = CounterMetricFamily(
            "router_redis_errors", "Failed Redis calls, by operation.", labels=["operation"]
        )
        for operation, count in sorted(errors.items()):
            family.add_metric([operation], count)
        yield family
        cooling = GaugeMetricFamily("router_agent_cooldown_seconds", "Seconds each agent still cools down "
                                    "(agents not cooling down are absent).", labels=["agent"])
        for agent, left in sorted(self._metrics.cooling.items()):
            cooling.add_metric([agent], left)
        yield cooling
        yield from _retrain_families(self._metrics.retrain_round)
        batcher = getattr(context, "batcher", None)
        size = batcher.cache_info()["size"] if batcher is not None else 0
        yield GaugeMetricFamily("router_embed_cache_entries", "Prompt embeddings in the LRU cache.", value=size)
        if batcher is not None:
            yield GaugeMetricFamily("router_encode_threads", "Encode passes run at once (ROUTER_ENCODE_THREADS).",
                                    value=batcher.threads)
        embedder = getattr(context.registry.current, "embedder", None) if context is not None else None
        if embedder is not None:
            info = InfoMetricFamily("router_encoder", "What runs the embedding model (ROUTER_ENCODER; with onnx, "
                                    "the export chosen at start-up).")
            info.add_metric([], {"encoder": str(getattr(embedder, "encoder", "torch"))})
            yield info
            yield GaugeMetricFamily("router_encode_pass_size", "Prompts per forward pass of the embedding model "
                                    "(ROUTER_ENCODE_BATCH, measured at start-up when auto).", value=embedder.batch_size)


def _retrain_families(figures: dict[str, Any] | None) -> Iterator[Metric]:
    """The last retraining round (``agent-router retrain --every``), as written to Redis."""
    if not figures:
        return
    info = InfoMetricFamily("router_retrain_last_round", "The last retraining round: its status and the "
                            "version it published (empty when none).")
    info.add_metric([], {"status": str(figures.get("status", "")), "published": str(figures.get("published") or ""),
                         "verdict": str(figures.get("verdict") or "")})
    yield info
    yield GaugeMetricFamily("router_retrain_round", "Index of the last retraining round of its job.",
                            value=float(figures.get("round", 0)))
    value = GaugeMetricFamily("router_retrain_estimated_value", "Estimated value of greedy routing on held-out "
                              "logged decisions, by policy and estimator.", labels=["policy", "estimator"])
    ess = GaugeMetricFamily("router_retrain_effective_samples", "Effective sample size of the held-out logged "
                            "decisions, by policy.", labels=["policy"])
    for who in ("serving", "candidate"):
        for estimator in ("dr", "snips"):
            if isinstance(figures.get(f"{who}_{estimator}"), int | float):
                value.add_metric([who, estimator], float(figures[f"{who}_{estimator}"]))
        if isinstance(figures.get(f"{who}_ess"), int | float):
            ess.add_metric([who], float(figures[f"{who}_ess"]))
    yield value
    yield ess


def metrics_of(app: Any) -> RouterMetrics | None:
    """The app's :class:`RouterMetrics` (``app.state.metrics``), or None."""
    return getattr(getattr(app, "state", None), "metrics", None)


def annotate(request: Request, **fields: Any) -> None:
    """Attach log fields (``decision_id``, ``agent``, ``policy_version``, ...) to the request's log line."""
    request.scope.setdefault(LOG_FIELDS_KEY, {}).update(fields)


def route_template(app: Any, scope: Scope) -> str:
    """The path template of the route ``scope`` matched (``/v1/route``), or ``"unmatched"``.

    After routing, the route is in ``scope["route"]``; before it (a request refused by a
    middleware), the path is matched against the paths of the app's OpenAPI schema.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    templates = getattr(app, "_agent_router_templates", None)
    if templates is None:
        try:
            paths = list(app.openapi().get("paths", {}))
        except Exception:  # no schema: every path is "unmatched"
            paths = []
        templates = [(compile_path(p)[0], p) for p in paths]
        app._agent_router_templates = templates
    request_path = scope.get("path", "")
    for regex, template in templates:
        if regex.match(request_path):
            return template
    return UNMATCHED


class ObservabilityMiddleware:
    """ASGI middleware: request count and latency per endpoint, and one structured log line.

    Args:
        app: the wrapped ASGI app.
        owner: the FastAPI app (its routes name the endpoints; its ``state.metrics`` counts).
        server_timing: add a ``Server-Timing`` header (W3C Server Timing) to each response whose
            handler attached ``stages_ms`` (:func:`annotate`): ``embed;dur=3.214, encode;dur=2.871, ...``
            (ms).
    """

    def __init__(self, app: ASGIApp, owner: FastAPI, server_timing: bool = False) -> None:
        self.app = app
        self.owner = owner
        self.server_timing = server_timing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                stages = (scope.get(LOG_FIELDS_KEY) or {}).get("stages_ms") if self.server_timing else None
                if stages:
                    value = ", ".join(f"{stage};dur={ms:.3f}" for stage, ms in stages.items())
                    message = {**message, "headers": [*message.get("headers", ()), (b"server-timing", value.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except BaseException:
            status = 500
            raise
        finally:
            self._record(scope, status, time.perf_counter() - started)

    def _record(self, scope: Scope, status: int, seconds: float) -> None:
        endpoint = route_template(self.owner, scope)
        method = scope.get("method", "")
        metrics = metrics_of(self.owner)
        if metrics is not None:
            labels = (method, endpoint, str(status))
            metrics.requests.labels(*labels).inc()
            metrics.latency.labels(*labels).observe(seconds)
        level = logging.DEBUG if endpoint in QUIET_ENDPOINTS and status < 400 else logging.INFO
        if access_logger.isEnabledFor(level):
            fields = dict(scope.get(LOG_FIELDS_KEY) or {})
            fields.update(method=method, endpoint=endpoint, status=status, latency_ms=round(seconds * 1000, 3))
            access_logger.log(level, "request", extra=fields)
