"""An OpenAI-compatible upstream for the proxy's tests that fails, stalls and breaks streams on command.

Run it as ``python -m tests.router.fake_upstream --port N``. Each upstream model name has a mode,
set with ``POST /control {"model": ..., "mode": ...}``:

- ``ok``: answers ``"echo: <last user message>"`` (streamed word by word), with ``usage``;
- ``fail-500``, ``fail-503``, ``fail-429``: that status with an OpenAI error body;
- ``reject-400``: a 400 (the request itself refused);
- ``stall``: waits without answering until the client goes away;
- ``drop``: sends the headers, then drops the connection (no chunk, no body);
- ``break``: streams two chunks, then drops the connection (non-streaming: as ``drop``);
- ``slow``: streams a chunk every 0.1 s for 30 s.

``GET /stats`` tells per model how many requests started, how many ended because the client went
away (``cancelled``), and whether an ``Authorization`` header came (``auth``: the last one's
SHA-256, so tests can check the key was sent without the fake keeping it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import time
from collections import defaultdict
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse


def create_app() -> FastAPI:
    app = FastAPI()
    modes: dict[str, str] = defaultdict(lambda: "ok")
    stats: dict[str, dict[str, Any]] = defaultdict(lambda: {"started": 0, "cancelled": 0, "auth": None})

    @app.post("/control")
    async def control(body: dict[str, str]) -> dict[str, str]:
        modes[body["model"]] = body["mode"]
        return {"model": body["model"], "mode": modes[body["model"]]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/stats")
    async def get_stats() -> dict[str, Any]:
        return stats

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        body = await request.json()
        model = body["model"]
        mode = modes[model]
        entry = stats[model]
        entry["started"] += 1
        auth = request.headers.get("authorization")
        entry["auth"] = hashlib.sha256(auth.encode()).hexdigest() if auth else None
        text = next((m.get("content") for m in reversed(body["messages"]) if m.get("role") == "user"), "")
        text = text if isinstance(text, str) else json.dumps(text)
        words = f"echo: {text}".split(" ")
        usage = {"prompt_tokens": len(text.split()) + 3, "completion_tokens": len(words),
                 "total_tokens": len(text.split()) + 3 + len(words)}
        created = int(time.time())
        if mode.startswith(("fail-", "reject-")):
            status = int(mode.split("-")[1])
            return JSONResponse({"error": {"message": f"fake {mode}", "type": "server_error", "code": None,
                                           "param": None}}, status_code=status)
        if mode == "stall":
            while not await request.is_disconnected():
                await asyncio.sleep(0.05)
            entry["cancelled"] += 1
            return JSONResponse({}, status_code=499)
        if mode in ("drop", "break") and not body.get("stream"):
            async def nothing():
                raise ConnectionAbortedError("fake upstream drops the connection")
                yield b""  # pragma: no cover - makes this an async generator

            return StreamingResponse(nothing(), media_type="application/json")  # headers, then a dropped connection

        def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
            return "data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created,
                                          "model": model, "choices": [{"index": 0, "delta": delta,
                                                                       "finish_reason": finish}]}) + "\n\n"

        if body.get("stream"):
            async def events():
                if mode == "drop":
                    raise ConnectionAbortedError("fake upstream drops the connection")
                try:
                    yield chunk({"role": "assistant", "content": ""})
                    if mode == "slow":
                        for i in range(300):
                            yield chunk({"content": f"{i} "})
                            await asyncio.sleep(0.1)
                    for i, word in enumerate(words):
                        if mode == "break" and i == 1:
                            raise ConnectionAbortedError("fake upstream breaks the stream")
                        yield chunk({"content": word if i == 0 else " " + word})
                    yield chunk({}, "stop")
                    if (body.get("stream_options") or {}).get("include_usage"):
                        yield "data: " + json.dumps({"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                                     "created": created, "model": model, "choices": [],
                                                     "usage": usage}) + "\n\n"
                    yield "data: [DONE]\n\n"
                except (asyncio.CancelledError, GeneratorExit):
                    entry["cancelled"] += 1
                    raise

            return StreamingResponse(events(), media_type="text/event-stream")
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": created, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}], "usage": usage}

    return app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    uvicorn.run(create_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
