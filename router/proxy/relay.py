"""One proxied request: route, call the chosen agent, fall back, and log every attempt itself.

Each attempt is a decision of its own (``POST /v1/route``'s: logged context, propensity, lease):
the first is the router's choice among the agents with an upstream; on an
:class:`~router.proxy.client.UpstreamFailure` the next is the router's choice with the failed
agents masked out (the next most probable, or a new sample under exploration), up to
``ROUTER_PROXY_ATTEMPTS`` within the ``ROUTER_UPSTREAM_TIMEOUT_S`` deadline. When an attempt ends,
its call record (:class:`~contract.experience.Feedback` with ``source="proxy"``) is written to the
experience log: outcome, upstream status, latency, time to first token, tokens and cost; quality 0
for a failure, None for an answer (the client may post its quality later by decision id). The
lease on the agent is held until then, a failure counts as quality 0 towards the agent's cooldown
and an answer as 1 (so cooldowns also follow failing calls, as LiteLLM's do), and the cost is
added to the client key's spending.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from contract.experience import Feedback
from contract.pricing import CHARS_PER_TOKEN, call_cost_usd
from router.decide import decide
from router.errors import openai_error_body
from router.experience.base import utc_now_iso
from router.inflight import NoAgentAvailable
from router.metrics import RouterMetrics
from router.proxy.client import UpstreamClient, UpstreamFailure, Usage
from router.proxy.keys import KeySpend
from router.proxy.openai_api import ModelChoice
from router.service import Decision, RoutingService
from router.settings import ClientKey
from router.upstreams import Upstream

logger = logging.getLogger(__name__)


@dataclass
class Proxy:
    """What the proxy serves with (``AppContext.proxy``).

    Attributes:
        upstreams: agent name -> endpoint (:func:`router.upstreams.load_upstreams`).
        client: the pooled upstream client.
        spend: each client key's spending.
    """

    upstreams: dict[str, Upstream]
    client: UpstreamClient
    spend: KeySpend


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
    """

    decision: Decision
    upstream: Upstream
    started: float = field(default_factory=time.monotonic)
    first_token_at: float | None = None
    usage: Usage | None = None
    content_chars: int = 0
    status: int | None = None
    #: the outcome once known, before its record is written (a stream knows it at ``[DONE]``)
    outcome: str | None = None
    finished: bool = False


def answer_chars(body: dict[str, Any]) -> int:
    """Characters of answer text in a completion or a chunk (``message`` or ``delta`` content)."""
    total = 0
    for choice in body.get("choices") or []:
        if not isinstance(choice, dict):
            continue
        part = choice.get("message") or choice.get("delta") or {}
        content = part.get("content") if isinstance(part, dict) else None
        total += len(content) if isinstance(content, str) else 0
    return total


class ProxyCall:
    """The attempts of one request (see the module docstring).

    Args:
        service: the served policy, read once for the whole request.
        context: the app's :class:`~router.context.AppContext`.
        proxy: the proxy's upstreams, client and spending.
        key: the client key.
        prompt, session_id: what the router routes on.
        choice: the model name's :class:`~router.proxy.openai_api.ModelChoice`.
        explore: sample the agent (exploration) rather than take the argmax.
    """

    def __init__(self, service: RoutingService, context: Any, proxy: Proxy, key: ClientKey, prompt: str,
                 session_id: str | None, choice: ModelChoice, explore: bool) -> None:
        self.service, self.context, self.proxy, self.key = service, context, proxy, key
        self.prompt, self.session_id, self.choice, self.explore = prompt, session_id, choice, explore
        self.deadline = time.monotonic() + context.settings.upstream_timeout_s
        self.failed: list[str] = []
        self.attempts: list[Attempt] = []
        self._embedding: np.ndarray | None = None

    @property
    def metrics(self) -> RouterMetrics:
        return self.context.metrics

    def remaining_s(self) -> float:
        """Seconds left before the deadline (may be <= 0)."""
        return self.deadline - time.monotonic()

    def candidates(self) -> list[str]:
        """The agents this request may go to: the model's agent, or every agent with an upstream."""
        if self.choice.agent is not None:
            return [self.choice.agent] if self.choice.agent in self.service.agents else []
        return [a for a in self.service.agents if a in self.proxy.upstreams]

    async def next_attempt(self) -> Attempt | None:
        """Route among the candidates not yet failed; log the decision and take the lease.

        Returns:
            The attempt, or None when no candidate is left or attempts or time ran out.

        Raises:
            PreferenceError: a cost weight this policy does not take.
            StoreUnavailable: the decision could not be logged.
        """
        settings = self.context.settings
        left = [a for a in self.candidates() if a not in self.failed]
        if not left or len(self.attempts) >= settings.proxy_attempts or self.remaining_s() <= 0:
            return None
        if self._embedding is None:
            self._embedding = await self.context.batcher.embed(self.service.embedder, self.prompt)
        context = self.context
        try:
            decision = await decide(self.service, self.prompt, self._embedding, settings=settings, store=context.store,
                                    load=context.load, cooldowns=context.cooldowns, metrics=context.metrics,
                                    candidates=self.candidates(), explore=self.explore, session_id=self.session_id,
                                    cost_weight=self.choice.cost_weight, excluded=self.failed)
        except NoAgentAvailable:
            return None
        attempt = Attempt(decision=decision, upstream=self.proxy.upstreams[decision.agent])
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
        key = self.key.name
        self.metrics.proxy_calls.labels(key=key, agent=agent, outcome=outcome).inc()
        self.metrics.proxy_upstream_seconds.labels(agent=agent).observe(now - attempt.started)
        if attempt.first_token_at is not None:
            self.metrics.proxy_first_token_seconds.labels(agent=agent).observe(attempt.first_token_at - attempt.started)
        if cost > 0:
            self.metrics.proxy_cost.labels(key=key).inc(cost)
        if usage.prompt_tokens:
            self.metrics.proxy_tokens.labels(key=key, kind="prompt").inc(usage.prompt_tokens)
        if usage.completion_tokens:
            self.metrics.proxy_tokens.labels(key=key, kind="completion").inc(usage.completion_tokens)
        try:
            await self.context.store.record_feedback(attempt.decision.decision_id, feedback)
        except Exception as exc:
            logger.warning("call record of decision %s not written: %s: %s", attempt.decision.decision_id,
                           type(exc).__name__, exc)
        await self.context.load.release(agent, attempt.decision.decision_id)
        if outcome in ("ok", "error", "timeout"):
            await self.context.cooldowns.observe(agent, 0.0 if failed else 1.0)
        await self.proxy.spend.add(key, cost)


async def until_disconnected(receive: Any) -> None:
    """Return when the client closes the connection (ASGI ``http.disconnect``); the request body must
    have been read already."""
    while True:
        message = await receive()
        if message.get("type") == "http.disconnect":
            return


def sse(event: dict[str, Any] | str) -> bytes:
    """One server-sent event ``data: ...`` (a JSON object, or ``[DONE]``)."""
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"), allow_nan=False)
    return f"data: {data}\n\n".encode()


async def relay_stream(call: ProxyCall, attempt: Attempt, first: dict[str, Any],
                       events: AsyncIterator[dict[str, Any]], include_usage: bool) -> AsyncIterator[bytes]:
    """The client's stream: the upstream's chunks with ``model`` set to the agent, then ``[DONE]``;
    an error event when the upstream breaks, stalls or the deadline passes. The attempt's outcome is
    known here (``attempt.outcome``) and its record written after the last event went out; a client
    that goes away before leaves it unknown, and the response's closing records it as ``cancelled``
    (:class:`~router.routes.chat.ProxyStream`)."""
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
            if call.remaining_s() <= 0:
                raise UpstreamFailure("timeout", f"agent {agent!r}: the request's deadline passed mid-stream")
    except UpstreamFailure as exc:
        attempt.outcome = exc.outcome
        yield sse(openai_error_body(str(exc), "upstream_error", code=exc.outcome))
        await call.finish(attempt, exc.outcome)
        return
    attempt.outcome = "ok"
    yield sse("[DONE]")
    await call.finish(attempt, "ok")  # after the client has its answer


async def first_event(events: AsyncIterator[dict[str, Any]], attempt: Attempt) -> dict[str, Any]:
    """The stream's first event (its time is the attempt's time to first token).

    Raises:
        UpstreamFailure: the stream failed, or ended before any event.
    """
    try:
        event = await anext(events)
    except StopAsyncIteration:
        raise UpstreamFailure("error", f"agent {attempt.upstream.agent!r} sent an empty stream", attempt.status) \
            from None
    attempt.first_token_at = time.monotonic()
    return event

