"""Server-sent events and the answer's text: the pieces of a relayed completion that know nothing
of routing (:mod:`router.proxy.attempts` runs the attempts)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from router.proxy.client import UpstreamFailure


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


async def first_event(events: AsyncIterator[dict[str, Any]], agent: str, status: int | None) -> dict[str, Any]:
    """The stream's first event (the caller times it: the attempt's time to first token).

    Raises:
        UpstreamFailure: the stream failed, or ended before any event (``status``: the upstream's).
    """
    try:
        return await anext(events)
    except StopAsyncIteration:
        raise UpstreamFailure("error", f"agent {agent!r} sent an empty stream", status) from None
