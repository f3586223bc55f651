"""One proxied request, end to end: route, call the chosen agent, fall back, log every attempt.

:class:`ProxyCall` owns the attempt loop of ``POST /v1/chat/completions`` (streamed or not) and
its one mapping from what went wrong to an attempt's outcome (:meth:`ProxyCall.settle`).

Each attempt is a decision of its own (``POST /v1/route``'s, by :meth:`router.routing.Router.decide`:
logged context, propensity, lease): the first is the router's choice among the agents with an
upstream; on an :class:`~router.proxy.client.UpstreamFailure` the next is the router's choice with
the failed agents masked out (the next most probable, or a new sample under exploration), up to
``ROUTER_PROXY_ATTEMPTS`` within the ``ROUTER_UPSTREAM_TIMEOUT_S`` deadline. When an attempt ends,
its call record (:class:`~contract.experience.Feedback` with ``source="proxy"``) is written to the
experience log: outcome, upstream status, latency, time to first token, tokens and cost; quality 0
for a failure, None for an answer (the client may post its quality later by decision id). The
lease on the agent is held until then, a failure counts as quality 0 towards the agent's cooldown
and an answer as 1 (so cooldowns also follow failing calls, as LiteLLM's do), and the cost is
added to the client key's spending.

=============================  ===========  =========================================
what happened                  outcome      then
=============================  ===========  =========================================
an answer                      ``ok``       answered (the record written after it went out)
``UpstreamFailure``            its own      the next agent (``error``) or stop (``timeout``)
``UpstreamRejected`` (4xx)     ``rejected`` the upstream's error to the client
the deadline passed            ``timeout``  stop: 504
the client went away           ``cancelled`` nothing (499, nobody reads it)
=============================  ===========  =========================================
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal, TypeVar

import anyio
from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from contract.experience import Feedback
from contract.pricing import CHARS_PER_TOKEN, call_cost_usd
from experience.agent_changes import AgentChanges, AgentChangesUnavailable
from experience.base import utc_now_iso
from router.errors import openai_error_body
from router.inflight import NoAgentAvailable
from router.metrics import annotate
from router.proxy.client import UpstreamClient, UpstreamFailure, UpstreamRejected, Usage
from router.proxy.keys import KeySpend
from router.proxy.openai_api import ChatCompletionRequest, OpenAIError
from router.proxy.relay import answer_chars, first_event, sse, until_disconnected
from router.routing import Router, RoutingRequest
from router.service import Decision, RoutingService
from router.settings import ClientKey
from router.upstreams import Upstream, added_upstreams, policy_prices

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass
class Proxy:
    """What the proxy serves with (``AppContext.proxy``).

    Attributes:
        upstreams: agent name -> endpoint (:func:`router.upstreams.load_upstreams`).
        client: the pooled upstream client.
        spend: each client key's spending.
        added: the endpoints of agents added at run time with an ``upstream`` (``POST /admin/agents``
            on any replica), taken from the recorded changes once a served policy routes to them
            (:meth:`refresh`).
    """

    upstreams: dict[str, Upstream]
    client: UpstreamClient
    spend: KeySpend
    added: dict[str, Upstream] = field(default_factory=dict)
    _seen_version: str | None = field(default=None, init=False, repr=False)

    def upstream_of(self, agent: str) -> Upstream | None:
        """``agent``'s endpoint: the file's, else the one it was added with; None: not proxied."""
        return self.upstreams.get(agent) or self.added.get(agent)

    async def refresh(self, service: RoutingService, changes: AgentChanges) -> None:
        """Once per served policy version, when it routes to agents without an endpoint, read the
        recorded agent changes for the endpoints they were added with (no restart: a hot swap to a
        policy over the new set brings them). A store that cannot be read is tried at the next request."""
        version = service.version
        if version == self._seen_version:
            return
        missing = [a for a in service.agents if self.upstream_of(a) is None]
        if missing:
            try:
                recorded = await anyio.to_thread.run_sync(changes.read)
            except AgentChangesUnavailable as exc:
                logger.warning("agents added at run time: their upstreams not read yet: %s", exc)
                return
            found, unusable = added_upstreams(recorded.added, missing, self.upstreams,
                                              policy_prices(service.policy.meta.agent_specs))
            for name, upstream in found.items():
                logger.info("proxying agent %s (added at run time): %s, model %s", name, upstream.url, upstream.model)
            for name, why in unusable.items():
                logger.warning("agent %s was added with an upstream this replica cannot use: %s", name, why)
            self.added |= found
        self._seen_version = version


@dataclass
class Attempt:
    """One call of one agent.

    Attributes:
        decision: the logged decision that chose it.
        upstream: its endpoint.
        started: ``time.monotonic()`` when the call started.
        first_token_at: ``time.monotonic()`` of the first streamed chunk, or None.
        usage: the upstream's ``usage``, or None.
        content_chars: characters of answer text received (for the cost when no usage came).
        status: the upstream's HTTP status, or None.
        outcome: the outcome once known, before its record is written (a stream knows it at
            ``[DONE]``).
        finished: its record is written.
    """

    decision: Decision
    upstream: Upstream
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    usage: Usage | None = None
    content_chars: int = 0
    status: int | None = None
    outcome: str | None = None
    finished: bool = False


class ClientGone(Exception):
    """The client closed the connection while the proxy waited for an upstream."""


async def race(request: Request, work: Awaitable[T], timeout_s: float) -> T:
    """``work``'s result, unless the client disconnects (:class:`ClientGone`) or ``timeout_s`` passes
    (``TimeoutError``) first; then ``work`` is cancelled, which closes its upstream connection."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnected(request.receive))
    try:
        done, _ = await asyncio.wait({task, gone}, timeout=max(0.0, timeout_s), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task in done:
        return task.result()
    task.cancel()
    with contextlib.suppress(BaseException):
        await task
    if gone in done:
        raise ClientGone
    raise TimeoutError


async def _send_then(respond: Awaitable[None], on_close: Callable[[], Awaitable[None]]) -> None:
    """Send a response (``respond``), then run ``on_close`` shielded from the request's cancellation."""
    try:
        await respond
    finally:
        with anyio.CancelScope(shield=True):
            await on_close()


class ProxyAnswer(JSONResponse):
    """A non-streamed answer; ``on_close`` (writing the call record) runs once it is sent, off the
    client's path, and also when the client went away first."""

    def __init__(self, content: Any, on_close: Callable[[], Awaitable[None]], headers: dict[str, str]) -> None:
        super().__init__(content, headers=headers)
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _send_then(super().__call__(scope, receive, send), self._on_close)


class ProxyStream(StreamingResponse):
    """A streamed answer whose ``on_close`` always runs when the response ends, also when the client
    went away mid-stream (it then cancels the upstream call and logs the attempt as cancelled)."""

    def __init__(self, content: Any, on_close: Callable[[], Awaitable[None]], headers: dict[str, str]) -> None:
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", **headers})
        self._on_close = on_close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await _send_then(super().__call__(scope, receive, send), self._on_close)


Next = Literal["next", "stop", "gone"]


def no_agent_error() -> OpenAIError:
    """409: no agent the request's model can use is available, so no attempt could start."""
    return OpenAIError(409, "every agent this model can use is marked down; no agent can take the request",
                       "invalid_request_error", code="no_agent_available")


class ProxyCall:
    """The attempts of one request (see the module docstring).

    Args:
        router: the routing capability.
        proxy: the proxy's upstreams, client and spending.
        key: the client key.
        routing: the request, planned once against the policy served when it came (its candidates:
            the model's agent, or every agent with an upstream).
        deadline_s: seconds the whole request may take (``ROUTER_UPSTREAM_TIMEOUT_S``).
        max_attempts: at most this many agents are tried (``ROUTER_PROXY_ATTEMPTS``).
    """

    def __init__(self, router: Router, proxy: Proxy, key: ClientKey, routing: RoutingRequest, deadline_s: float,
                 max_attempts: int) -> None:
        self.router, self.proxy, self.key, self.routing = router, proxy, key, routing
        self.deadline = time.monotonic() + deadline_s
        self.max_attempts = max_attempts
        self.failed: list[str] = []
        self.attempts: list[Attempt] = []

    @property
    def version(self) -> str:
        """The version of the policy that decides every attempt."""
        return self.routing.service.version

    def remaining_s(self) -> float:
        """Seconds left before the deadline (may be <= 0)."""
        return self.deadline - time.monotonic()

    async def next_attempt(self) -> Attempt | None:
        """Route among the candidates not yet failed; log the decision and take the lease.

        Returns:
            The attempt, or None when no candidate is left or attempts or time ran out.

        Raises:
            StoreUnavailable: the decision could not be logged.
        """
        left = [a for a in self.routing.plan.candidates or () if a not in self.failed]
        if not left or len(self.attempts) >= self.max_attempts or self.remaining_s() <= 0:
            return None
        try:
            decision = await self.router.decide(self.routing, excluded=self.failed)
        except NoAgentAvailable:
            return None
        upstream = self.proxy.upstream_of(decision.agent)
        assert upstream is not None  # the candidates are agents with an upstream
        attempt = Attempt(decision=decision, upstream=upstream)
        self.attempts.append(attempt)
        return attempt

    async def finish(self, attempt: Attempt, outcome: str) -> None:
        """Write the attempt's call record, release its lease, feed the cooldown, count its cost.

        Never raises: a record that cannot be written is logged (the answer already went out).
        """
        if attempt.finished:
            return
        attempt.finished = True
        agent = attempt.upstream.agent
        now = time.monotonic()
        usage = attempt.usage or Usage()
        received = attempt.usage is not None or attempt.content_chars > 0
        prompt_tokens = usage.prompt_tokens if usage.prompt_tokens is not None else attempt.decision.prompt_tokens
        completion = (usage.completion_tokens if usage.completion_tokens is not None
                      else math.ceil(attempt.content_chars / CHARS_PER_TOKEN))
        cost = call_cost_usd(attempt.upstream.price, prompt_tokens or 0, completion) if received else 0.0
        failed = outcome in ("error", "timeout")  # the agent failed; "rejected" and "cancelled" say nothing of it
        feedback = Feedback(
            quality=0.0 if failed else None, cost_usd=cost, latency_ms=(now - attempt.started) * 1000.0,
            feedback_at=utc_now_iso(), source="proxy", outcome=outcome, upstream_status=attempt.status,
            ttft_ms=(attempt.first_token_at - attempt.started) * 1000.0 if attempt.first_token_at else None,
            usage_prompt_tokens=usage.prompt_tokens, usage_completion_tokens=usage.completion_tokens)
        if failed:
            self.failed.append(agent)
        key, metrics = self.key.name, self.router.metrics
        metrics.proxy_calls.labels(key=key, agent=agent, outcome=outcome).inc()
        metrics.proxy_upstream_seconds.labels(agent=agent).observe(now - attempt.started)
        if attempt.first_token_at is not None:
            metrics.proxy_first_token_seconds.labels(agent=agent).observe(attempt.first_token_at - attempt.started)
        if cost > 0:
            metrics.proxy_cost.labels(key=key).inc(cost)
        if usage.prompt_tokens:
            metrics.proxy_tokens.labels(key=key, kind="prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            metrics.proxy_tokens.labels(key=key, kind="completion").inc(usage.completion_tokens)
        try:
            await self.router.store.record_feedback(attempt.decision.decision_id, feedback)
        except Exception as exc:
            logger.warning("call record of decision %s not written: %s: %s", attempt.decision.decision_id,
                           type(exc).__name__, exc)
        await self.router.load.release(agent, attempt.decision.decision_id)
        if outcome in ("ok", "error", "timeout"):
            await self.router.cooldowns.observe(agent, 0.0 if failed else 1.0)
        await self.proxy.spend.add(key, cost)

    async def settle(self, attempt: Attempt, exc: BaseException, failures: list[UpstreamFailure], when: str) -> Next:
        """The one mapping from what ended an attempt early to its outcome (the module docstring's
        table): write its record, then say what the loop does next.

        Raises:
            OpenAIError: the upstream rejected the request (its status and message).
            BaseException: ``exc`` itself when it is none of the table's.
        """
        with anyio.CancelScope(shield=True):  # the record is written even when the request is cancelled
            if isinstance(exc, UpstreamFailure):
                attempt.status = exc.status or attempt.status
                await self.finish(attempt, exc.outcome)
                failures.append(exc)
                return "next"
            if isinstance(exc, UpstreamRejected):
                attempt.status = exc.status
                await self.finish(attempt, "rejected")
                raise OpenAIError(exc.status, str(exc), code="upstream_rejected") from None
            if isinstance(exc, TimeoutError):
                await self.finish(attempt, "timeout")
                failures.append(UpstreamFailure(
                    "timeout", f"agent {attempt.upstream.agent!r}: the request's deadline passed{when}"))
                return "stop"
            await self.finish(attempt, "cancelled")
        if isinstance(exc, ClientGone):
            return "gone"
        raise exc

    def headers(self, attempt: Attempt) -> dict[str, str]:
        """Who answered: ``X-Router-Decision-Id``, ``-Agent``, ``-Policy-Version``, ``-Attempts``."""
        return {"X-Router-Decision-Id": attempt.decision.decision_id, "X-Router-Agent": attempt.upstream.agent,
                "X-Router-Policy-Version": self.version, "X-Router-Attempts": str(len(self.attempts))}

    def all_failed(self, failures: list[UpstreamFailure]) -> OpenAIError:
        """The error once no attempt answered: 409 when none could start, else 504 when the last
        one timed out, else 502."""
        if not self.attempts:
            return no_agent_error()
        timeout = failures and failures[-1].outcome == "timeout"
        text = "; ".join(str(f) for f in failures)
        return OpenAIError(504 if timeout else 502, f"no agent answered ({len(self.attempts)} attempts): {text}",
                           "upstream_error", code="upstream_timeout" if timeout else "upstream_failed")

    async def complete(self, body: ChatCompletionRequest, request: Request) -> Response:
        """Answer without streaming: the first agent that answers, ``model`` set to it.

        Raises:
            OpenAIError: an upstream rejected the request, or no attempt answered.
        """
        failures: list[UpstreamFailure] = []
        while (attempt := await self.next_attempt()) is not None:
            upstream = attempt.upstream
            try:
                answer, attempt.status = await race(
                    request, self.proxy.client.complete(upstream, body.upstream_body(upstream.model)),
                    self.remaining_s())
            except BaseException as exc:
                step = await self.settle(attempt, exc, failures, "")
                if step == "next":
                    continue
                if step == "gone":
                    return Response(status_code=499)  # nobody reads it
                break
            attempt.usage = Usage.of(answer)
            attempt.content_chars = answer_chars(answer)
            answer["model"] = upstream.agent
            annotate(request, decision_id=attempt.decision.decision_id, agent=upstream.agent,
                     policy_version=self.version, stages_ms=self.routing.stages_ms())
            # the call record is written once the answer went out: it is not on the client's path
            return ProxyAnswer(answer, partial(self.finish, attempt, "ok"), self.headers(attempt))
        raise self.all_failed(failures)

    async def stream(self, body: ChatCompletionRequest, request: Request) -> Response:
        """Answer as server-sent events: the first agent whose stream opens, relayed.

        Raises:
            OpenAIError: an upstream rejected the request, or no attempt opened a stream.
        """
        include_usage = bool((body.stream_options or {}).get("include_usage"))
        failures: list[UpstreamFailure] = []
        while (attempt := await self.next_attempt()) is not None:
            upstream = attempt.upstream
            upstream_body = body.upstream_body(upstream.model)
            upstream_body["stream_options"] = {**(body.stream_options or {}), "include_usage": True}  # for the cost
            stack = contextlib.AsyncExitStack()
            try:
                events, first = await race(request, self._open_stream(attempt, upstream_body, stack),
                                           self.remaining_s())
            except BaseException as exc:
                with anyio.CancelScope(shield=True):
                    await stack.aclose()
                step = await self.settle(attempt, exc, failures, " before its first chunk")
                if step == "next":
                    continue
                if step == "gone":
                    return Response(status_code=499)
                break
            content = self._relay(attempt, first, events, include_usage)

            async def close(content=content, stack=stack, attempt=attempt) -> None:
                await content.aclose()
                await stack.aclose()
                await self.finish(attempt, attempt.outcome or "cancelled")  # a no-op when the stream wrote it

            annotate(request, decision_id=attempt.decision.decision_id, agent=upstream.agent,
                     policy_version=self.version, stages_ms=self.routing.stages_ms())
            return ProxyStream(content, close, self.headers(attempt))
        raise self.all_failed(failures)

    async def _open_stream(self, attempt: Attempt, body: dict[str, Any],
                           stack: contextlib.AsyncExitStack) -> tuple[AsyncIterator[dict[str, Any]], dict[str, Any]]:
        stream = await stack.enter_async_context(self.proxy.client.stream(attempt.upstream, body))
        attempt.status = stream.status
        events = stream.events()
        stack.push_async_callback(events.aclose)
        first = await first_event(events, attempt.upstream.agent, attempt.status)
        attempt.first_token_at = time.monotonic()
        return events, first

    async def _relay(self, attempt: Attempt, first: dict[str, Any], events: AsyncIterator[dict[str, Any]],
                     include_usage: bool) -> AsyncIterator[bytes]:
        """The client's stream: the upstream's chunks with ``model`` set to the agent, then
        ``[DONE]``; an error event when the upstream breaks, stalls or the deadline passes. The
        attempt's outcome is known here (``attempt.outcome``) and its record written after the last
        event went out; a client that goes away before leaves it unknown, and the response's
        closing records it as ``cancelled`` (:class:`ProxyStream`)."""
        agent = attempt.upstream.agent

        def relay(event: dict[str, Any]) -> bytes | None:
            attempt.usage = Usage.of(event) or attempt.usage
            attempt.content_chars += answer_chars(event)
            if not include_usage and not event.get("choices") and event.get("usage") is not None:
                return None  # the usage chunk the proxy asked for itself
            event["model"] = agent
            return sse(event)

        chunk = relay(first)
        if chunk is not None:
            yield chunk
        try:
            async for event in events:
                chunk = relay(event)
                if chunk is not None:
                    yield chunk
                if self.remaining_s() <= 0:
                    raise UpstreamFailure("timeout", f"agent {agent!r}: the request's deadline passed mid-stream")
        except UpstreamFailure as exc:
            attempt.outcome = exc.outcome
            yield sse(openai_error_body(str(exc), "upstream_error", code=exc.outcome))
            await self.finish(attempt, exc.outcome)
            return
        attempt.outcome = "ok"
        yield sse("[DONE]")
        await self.finish(attempt, "ok")  # after the client has its answer
