"""An ASGI app that answers every request at once with a fixed JSON body the size of a
``POST /v1/route`` answer: run under uvicorn as the router is, it gives the floor of
``benchmarks/serve_latency.py``'s concurrency-1 latency that no server can go below (the HTTP
client, the loopback connection, uvicorn's parsing).

Usage: ``uvicorn benchmarks.null_server:app`` from the repository root.
"""

from __future__ import annotations

import json
from typing import Any

BODY = json.dumps({
    "decision_id": "0" * 32, "agent": "sql-writer", "policy_version": "20261207T000000Z-00000000",
    "probabilities": {f"agent-{k}": 0.111111 for k in range(9)}, "propensity": 1.0, "cost_weight": None,
}).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Read the whole request body, then answer ``200`` with :data:`BODY`."""
    if scope["type"] != "http":
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})
