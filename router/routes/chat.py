"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI-compatible proxy.

Point any OpenAI client at the server (``base_url=http://host:port/v1``): it routes the last user
message, calls the chosen agent's endpoint (``ROUTER_UPSTREAMS_FILE``), falls back on failure, and
answers with the agent's completion, ``model`` set to the agent that answered. The response
headers ``X-Router-Decision-Id``, ``X-Router-Agent``, ``X-Router-Policy-Version`` and
``X-Router-Attempts`` say who answered; the decision id takes quality feedback later
(``POST /v1/feedback``). Errors come in OpenAI's shape; 502 (every attempt failed) and 504 (the
deadline passed) are the upstreams'. :mod:`router.proxy.relay` describes the attempts and what
is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from router.context import AppContext
from router.deps import ContextDep
from router.metrics import annotate
from router.proxy.client import UpstreamFailure, UpstreamRejected, Usage
from router.proxy.keys import KeyRefused, authenticate
from router.proxy.openai_api import (
    PREFERENCE_PREFIX,
    ROUTER_MODEL,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    OpenAIError,
    parse_model,
)
from router.proxy.relay import (
    Attempt,
    Proxy,
    ProxyCall,
    answer_chars,
    first_event,
    relay_stream,
    until_disconnected,
)
from router.service import PreferenceError
from router.settings import ClientKey

api = APIRouter(tags=["proxy"])

T = TypeVar("T")

_ERRORS = {
    400: "Invalid request (OpenAI's error shape).",
    401: "Missing or invalid API key.",
    403: "The proxy is closed (no ROUTER_API_KEYS).",
    404: "Unknown model, or no upstreams configured.",
    409: "Every allowed agent is marked down.",
    429: "The key's daily budget is spent.",
    502: "Every attempt failed at its upstream.",
    503: "Experience store unavailable; retry after Retry-After seconds.",
    504: "The request's deadline passed upstream.",
}


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": _ERRORS[code]} for code in codes}


async def get_proxy(context: ContextDep) -> Proxy:
    """The proxy, or 404 when the server has no upstreams."""
    if context.proxy is None:
        raise OpenAIError(404, "this server proxies no agents: start it with ROUTER_UPSTREAMS_FILE",
                          code="proxy_not_configured")
    return context.proxy


async def client_key(request: Request, context: ContextDep,
                     authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> ClientKey:
    """The request's client key (:func:`router.proxy.keys.authenticate`)."""
    try:
        return authenticate(context.settings, authorization, request.client.host if request.client else None)
    except KeyRefused as exc:
        kind = "authentication_error" if exc.status_code == 401 else "permission_error"
        raise OpenAIError(exc.status_code, str(exc), kind, code=exc.code) from None


ProxyDep = Annotated[Proxy, Depends(get_proxy)]
KeyDep = Annotated[ClientKey, Depends(client_key)]


@api.get("/v1/models", response_model=ModelList, responses=_responses(401, 403, 404), summary="List the models")
async def models(context: ContextDep, proxy: ProxyDep, key: KeyDep) -> ModelList:
    """``router``, ``router-cw-<cost_weight>`` (a policy trained for every trade-off), and each agent
    with an upstream."""
    service = context.registry.current
    created = 0
    cards = [ModelCard(id=ROUTER_MODEL, created=created, owned_by="agent-router")]
    if service.policy.layout.cost_preference:
        cards.append(ModelCard(id=f"{PREFERENCE_PREFIX}{service.policy.layout.default_cost_weight:g}",
                               created=created, owned_by="agent-router"))
    cards += [ModelCard(id=a, created=created, owned_by="upstream") for a in service.agents if a in proxy.upstreams]
    return ModelList(data=cards)


class ClientGone(Exception):
    """The client closed the connection while the proxy waited for an upstream."""


async def _race(request: Request, work: Awaitable[T], timeout_s: float) -> T:
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


def _headers(call: ProxyCall, attempt: Attempt) -> dict[str, str]:
    return {"X-Router-Decision-Id": attempt.decision.decision_id, "X-Router-Agent": attempt.upstream.agent,
            "X-Router-Policy-Version": call.service.version, "X-Router-Attempts": str(len(call.attempts))}


def _all_failed(call: ProxyCall, failures: list[UpstreamFailure]) -> OpenAIError:
    if not call.attempts:
        return OpenAIError(409, "every agent this model can use is marked down; no agent can take the request",
                           "invalid_request_error", code="no_agent_available")
    timeout = failures and failures[-1].outcome == "timeout"
    text = "; ".join(str(f) for f in failures)
    return OpenAIError(504 if timeout else 502, f"no agent answered ({len(call.attempts)} attempts): {text}",
                       "upstream_error", code="upstream_timeout" if timeout else "upstream_failed")


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


@api.post("/v1/chat/completions", responses=_responses(400, 401, 403, 404, 409, 429, 502, 503, 504),
          summary="Route and proxy an OpenAI chat completion")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    context: ContextDep,
    proxy: ProxyDep,
    key: KeyDep,
    x_session_id: Annotated[str | None, Header(max_length=256)] = None,
) -> Response:
    """Route the last user message, call the agent (streaming or not), fall back on failure, and log
    every attempt. ``model``: ``router``, ``router-cw-<cost_weight>`` or an agent's name."""
    settings = context.settings
    try:
        await proxy.spend.check(key)
    except KeyRefused as exc:
        raise OpenAIError(exc.status_code, str(exc), "rate_limit_error", code=exc.code) from None
    service = context.registry.current
    prompt = body.prompt()
    if prompt is None:
        raise OpenAIError(400, "messages: no user message with text to route on", param="messages")
    if len(prompt) > settings.max_prompt_chars:
        raise OpenAIError(400, f"the last user message has {len(prompt)} characters; the limit is "
                          f"{settings.max_prompt_chars}", param="messages")
    choice = parse_model(body.model, [a for a in service.agents if a in proxy.upstreams])
    explore = settings.proxy_explore if body.explore is None else body.explore
    call = ProxyCall(service, context, proxy, key, prompt, x_session_id or body.user, choice, explore)
    try:
        if body.stream:
            return await _stream(call, body, request, context)
        return await _complete(call, body, request, context)
    except PreferenceError as exc:
        raise OpenAIError(400, str(exc), param="model", code="invalid_model") from None


async def _complete(call: ProxyCall, body: ChatCompletionRequest, request: Request, context: AppContext) -> Response:
    failures: list[UpstreamFailure] = []
    while (attempt := await call.next_attempt()) is not None:
        upstream = attempt.upstream
        try:
            answer, attempt.status = await _race(
                request, call.proxy.client.complete(upstream, body.upstream_body(upstream.model)), call.remaining_s())
        except UpstreamFailure as exc:
            attempt.status = exc.status
            await call.finish(attempt, exc.outcome)
            failures.append(exc)
            continue
        except UpstreamRejected as exc:
            attempt.status = exc.status
            await call.finish(attempt, "rejected")
            raise OpenAIError(exc.status, str(exc), code="upstream_rejected") from None
        except TimeoutError:
            await call.finish(attempt, "timeout")
            failures.append(UpstreamFailure("timeout", f"agent {upstream.agent!r}: the request's deadline passed"))
            break
        except ClientGone:
            await call.finish(attempt, "cancelled")
            return Response(status_code=499)  # nobody reads it
        attempt.usage = Usage.of(answer)
        attempt.content_chars = answer_chars(answer)
        answer["model"] = upstream.agent
        annotate(request, decision_id=attempt.decision.decision_id, agent=upstream.agent,
                 policy_version=call.service.version)
        # the call record is written once the answer went out: it is not on the client's path
        return ProxyAnswer(answer, partial(call.finish, attempt, "ok"), _headers(call, attempt))
    raise _all_failed(call, failures)


async def _open_stream(call: ProxyCall, attempt: Attempt, body: dict[str, Any],
                       stack: contextlib.AsyncExitStack) -> tuple[Any, dict[str, Any]]:
    stream = await stack.enter_async_context(call.proxy.client.stream(attempt.upstream, body))
    attempt.status = stream.status
    events = stream.events()
    stack.push_async_callback(events.aclose)
    return events, await first_event(events, attempt)


async def _stream(call: ProxyCall, body: ChatCompletionRequest, request: Request, context: AppContext) -> Response:
    include_usage = bool((body.stream_options or {}).get("include_usage"))
    failures: list[UpstreamFailure] = []
    while (attempt := await call.next_attempt()) is not None:
        upstream = attempt.upstream
        upstream_body = body.upstream_body(upstream.model)
        upstream_body["stream_options"] = {**(body.stream_options or {}), "include_usage": True}  # for the cost
        stack = contextlib.AsyncExitStack()
        try:
            events, first = await _race(request, _open_stream(call, attempt, upstream_body, stack), call.remaining_s())
        except BaseException as exc:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
                if isinstance(exc, UpstreamFailure):
                    attempt.status = exc.status or attempt.status
                    await call.finish(attempt, exc.outcome)
                    failures.append(exc)
                elif isinstance(exc, UpstreamRejected):
                    attempt.status = exc.status
                    await call.finish(attempt, "rejected")
                elif isinstance(exc, TimeoutError):
                    await call.finish(attempt, "timeout")
                    failures.append(UpstreamFailure("timeout", f"agent {upstream.agent!r}: the request's deadline "
                                                    "passed before its first chunk"))
                else:
                    await call.finish(attempt, "cancelled")
            if isinstance(exc, UpstreamFailure):
                continue
            if isinstance(exc, UpstreamRejected):
                raise OpenAIError(exc.status, str(exc), code="upstream_rejected") from None
            if isinstance(exc, TimeoutError):
                break
            if isinstance(exc, ClientGone):
                return Response(status_code=499)
            raise
        content = relay_stream(call, attempt, first, events, include_usage)

        async def close(content=content, stack=stack, attempt=attempt) -> None:
            await content.aclose()
            await stack.aclose()
            await call.finish(attempt, attempt.outcome or "cancelled")  # a no-op when the stream wrote it

        annotate(request, decision_id=attempt.decision.decision_id, agent=upstream.agent,
                 policy_version=call.service.version)
        return ProxyStream(content, close, _headers(call, attempt))
    raise _all_failed(call, failures)
