"""Calls to the agents' OpenAI-compatible endpoints: one pooled ``httpx.AsyncClient`` for all.

Timeouts (``ROUTER_UPSTREAM_*``): ``connect`` to open a connection; ``first_token`` for the
response to start (headers, and for a stream its first chunk) and between two chunks of a
stream; the total deadline of the request is the caller's (``asyncio.timeout``). A connection
error, a timeout, a 5xx, a 429, a 401/403 (the upstream refused our key) or a body that is not an
OpenAI answer is an :class:`UpstreamFailure`, on which the proxy falls back to another agent;
any other 4xx is the client's request, passed back as :class:`UpstreamRejected`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from router.upstreams import Upstream

#: Upstream statuses that mean "the agent failed", not "the request is wrong".
FAILURE_STATUSES = frozenset({401, 403, 408, 429})


class UpstreamFailure(Exception):
    """The agent did not answer: fall back.

    Attributes:
        outcome: ``"error"`` or ``"timeout"``.
        status: the upstream's HTTP status, None without a response.
    """

    def __init__(self, outcome: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.outcome, self.status = outcome, status


class UpstreamRejected(Exception):
    """The upstream refused the request itself (a 4xx other than :data:`FAILURE_STATUSES`): no
    fallback, the client gets this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class Usage:
    """Tokens of one call (from the upstream's ``usage``; None when it sent none)."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None

    @classmethod
    def of(cls, body: Any) -> Usage | None:
        usage = body.get("usage") if isinstance(body, dict) else None
        if not isinstance(usage, dict):
            return None
        prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
        return cls(prompt if isinstance(prompt, int) and prompt >= 0 else None,
                   completion if isinstance(completion, int) and completion >= 0 else None)


def _message(response: httpx.Response) -> str:
    """The upstream's error message (OpenAI's ``error.message``), short; never headers."""
    try:
        body = json.loads(response.content or b"null")
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and body["error"].get("message"):
        return str(body["error"]["message"])[:300]
    return response.reason_phrase or f"HTTP {response.status_code}"


def _check_status(upstream: Upstream, response: httpx.Response) -> None:
    status = response.status_code
    if status < 400:
        return
    if status >= 500 or status in FAILURE_STATUSES:
        raise UpstreamFailure("error", f"agent {upstream.agent!r} answered {status}: {_message(response)}", status)
    raise UpstreamRejected(status, f"agent {upstream.agent!r} refused the request ({status}): {_message(response)}")


class UpstreamClient:
    """The pooled client of every upstream.

    Args:
        connect_s: seconds to connect.
        first_token_s: seconds to the response (and first chunk), and between chunks.
    """

    def __init__(self, connect_s: float, first_token_s: float) -> None:
        self._http = httpx.AsyncClient(
            timeout=httpx.Timeout(connect=connect_s, read=first_token_s, write=first_token_s, pool=connect_s),
            limits=httpx.Limits(max_connections=512, max_keepalive_connections=64),
            follow_redirects=False, trust_env=False,
        )

    @staticmethod
    def _headers(upstream: Upstream) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if upstream.api_key is not None:
            headers["Authorization"] = f"Bearer {upstream.api_key.get_secret_value()}"
        return headers

    async def complete(self, upstream: Upstream, body: dict[str, Any]) -> tuple[dict[str, Any], int]:
        """POST a non-streaming request.

        Returns:
            ``(answer JSON object, HTTP status)``.

        Raises:
            UpstreamFailure: no answer (see the module docstring).
            UpstreamRejected: the upstream refused the request.
        """
        try:
            response = await self._http.post(upstream.url, json=body, headers=self._headers(upstream))
        except httpx.TimeoutException as exc:
            raise UpstreamFailure("timeout", f"agent {upstream.agent!r} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure("error", f"agent {upstream.agent!r} unreachable ({type(exc).__name__})") from None
        _check_status(upstream, response)
        try:
            answer = response.json()
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("choices"), list):
            raise UpstreamFailure("error", f"agent {upstream.agent!r} sent no chat completion",
                                  response.status_code)
        return answer, response.status_code

    @asynccontextmanager
    async def stream(self, upstream: Upstream, body: dict[str, Any]) -> AsyncIterator[StreamCall]:
        """Open a streaming request; the response is closed on exit (which cancels the upstream's
        generation when it has not finished).

        Raises:
            UpstreamFailure, UpstreamRejected: on opening, as :meth:`complete`.
        """
        request = self._http.build_request("POST", upstream.url, json=body, headers=self._headers(upstream))
        try:
            response = await self._http.send(request, stream=True)
        except httpx.TimeoutException as exc:
            raise UpstreamFailure("timeout", f"agent {upstream.agent!r} timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure("error", f"agent {upstream.agent!r} unreachable ({type(exc).__name__})") from None
        try:
            if response.status_code >= 400:
                await response.aread()
            _check_status(upstream, response)
            yield StreamCall(upstream, response)
        finally:
            await response.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()


class StreamCall:
    """An open stream: its events as parsed JSON objects, until ``[DONE]``."""

    def __init__(self, upstream: Upstream, response: httpx.Response) -> None:
        self.upstream, self.response = upstream, response
        self.status = response.status_code
        self.first_event_at: float | None = None

    async def events(self) -> AsyncIterator[dict[str, Any]]:
        """Each ``data:`` event (a JSON object) of the server-sent events.

        Raises:
            UpstreamFailure: the stream broke, stalled past the chunk timeout, ended without
                ``[DONE]``, or sent an error event or text that is not JSON.
        """
        agent = self.upstream.agent
        try:
            async for line in self.response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                try:
                    event = json.loads(data)
                except ValueError:
                    raise UpstreamFailure("error", f"agent {agent!r} sent an event that is not JSON",
                                          self.status) from None
                if not isinstance(event, dict):
                    raise UpstreamFailure("error", f"agent {agent!r} sent an event that is not an object", self.status)
                if "error" in event:
                    error = event["error"]
                    text = error.get("message") if isinstance(error, dict) else error
                    raise UpstreamFailure("error", f"agent {agent!r} stream error: {str(text)[:300]}", self.status)
                if self.first_event_at is None:
                    self.first_event_at = time.monotonic()
                yield event
        except httpx.TimeoutException:
            raise UpstreamFailure("timeout", f"agent {agent!r} stalled mid-stream", self.status) from None
        except httpx.HTTPError as exc:
            raise UpstreamFailure("error", f"agent {agent!r} broke the stream ({type(exc).__name__})",
                                  self.status) from None
        raise UpstreamFailure("error", f"agent {agent!r} ended the stream without [DONE]", self.status)
