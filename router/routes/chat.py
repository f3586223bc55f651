"""``POST /v1/chat/completions`` and ``GET /v1/models``: the OpenAI-compatible proxy.

Point any OpenAI client at the server (``base_url=http://host:port/v1``): it routes the last user
message, calls the chosen agent's endpoint (``ROUTER_UPSTREAMS_FILE``), falls back on failure, and
answers with the agent's completion, ``model`` set to the agent that answered. The response
headers ``X-Router-Decision-Id``, ``X-Router-Agent``, ``X-Router-Policy-Version`` and
``X-Router-Attempts`` say who answered; the decision id takes quality feedback later
(``POST /v1/feedback``). Errors come in OpenAI's shape; 502 (every attempt failed) and 504 (the
deadline passed) are the upstreams'. The handlers are thin: :mod:`router.proxy.attempts` owns the
attempts and what is logged.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import Response

from contract.errors import DomainError
from router.deps import ContextDep, RouterDep
from router.proxy.attempts import Proxy, ProxyCall, no_agent_error
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
from router.routing import PromptTooLong
from router.settings import ClientKey

api = APIRouter(tags=["proxy"])


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
    await proxy.refresh(service, context.agent_changes)  # agents added at run time
    cards += [ModelCard(id=a, created=created, owned_by="upstream") for a in service.agents
              if proxy.upstream_of(a) is not None]
    return ModelList(data=cards)


@api.post("/v1/chat/completions", responses=_responses(400, 401, 403, 404, 409, 429, 502, 503, 504),
          summary="Route and proxy an OpenAI chat completion")
async def chat_completions(
    body: ChatCompletionRequest,
    request: Request,
    context: ContextDep,
    router: RouterDep,
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
    prompt = body.prompt()
    if prompt is None:
        raise OpenAIError(400, "messages: no user message with text to route on", param="messages")
    service = router.service
    await proxy.refresh(service, context.agent_changes)  # agents added at run time
    upstream_agents = [a for a in service.agents if proxy.upstream_of(a) is not None]
    choice = parse_model(body.model, upstream_agents)
    candidates = [choice.agent] if choice.agent is not None else upstream_agents
    if not candidates:
        raise no_agent_error()
    explore = settings.proxy_explore if body.explore is None else body.explore
    try:
        routing = router.plan(prompt, candidates=candidates, cost_weight=choice.cost_weight, explore=explore,
                              session_id=x_session_id or body.user, what="the last user message", service=service)
    except PromptTooLong as exc:
        raise OpenAIError(400, str(exc), param="messages") from None
    except DomainError as exc:
        raise OpenAIError(400, str(exc), param="model", code="invalid_model") from None
    call = ProxyCall(router, proxy, key, routing, settings.upstream_timeout_s, settings.proxy_attempts)
    return await (call.stream(body, request) if body.stream else call.complete(body, request))
