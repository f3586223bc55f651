"""The agents server: the chosen agents behind an OpenAI-compatible HTTP API.

=================================  =====================================================
endpoint                           answer
=================================  =====================================================
``POST /v1/chat/completions``      ``chat.completion``; with ``"stream": true`` a
                                   ``text/event-stream`` of ``chat.completion.chunk``
                                   (a usage chunk last with
                                   ``stream_options.include_usage``), then ``[DONE]``
``GET /v1/models``                 ``{"object": "list", "data": [model, ...]}``
``GET /v1/models/{model}``         one model object
``GET /healthz``                   ``{"status": "ok", "models": [...]}``
=================================  =====================================================

Errors are OpenAI's ``{"error": {"message", "type", "param", "code"}}``: an unknown model 404
(``model_not_found``), a bad body (not JSON, wrong fields, values out of range) 400, a prompt past
the model's context 400 (``context_length_exceeded``), an unknown path 404; never a traceback.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agents.base import Agent, Completion, PromptTooLong
from agents.registry import AGENT_NAMES, build_agent
from agents.schemas import ChatCompletionRequest, chunk_body, completion_body, error_body, usage_body

logger = logging.getLogger(__name__)
OWNER = "agent-router"


class ModelNotFound(Exception):
    """A request named a model the server does not serve."""


def _error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, type_, param, code), status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        if first.get("type") == "json_invalid":
            message, param = "the body is not valid JSON", None
        elif not loc:
            message = "the body must be a JSON object (Content-Type: application/json)"
        else:
            message = f"{param or 'body'}: {first.get('msg', 'invalid')}"
        return _error(400, message, param=param)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if exc.status_code < 500 else "server_error"
        return _error(exc.status_code, str(exc.detail), type_)

    @app.exception_handler(ModelNotFound)
    async def no_model(request: Request, exc: ModelNotFound) -> JSONResponse:
        return _error(404, str(exc), param="model", code="model_not_found")

    @app.exception_handler(PromptTooLong)
    async def too_long(request: Request, exc: PromptTooLong) -> JSONResponse:
        return _error(400, str(exc), param="messages", code="context_length_exceeded")

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("request failed")
        return _error(500, "the agent failed; see the server's log", "server_error")


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _events(first: str | Completion, rest: Iterator[str | Completion], model: str,
            include_usage: bool) -> Iterator[str]:
    """The server-sent events of a streamed answer: role, content deltas, finish, usage, ``[DONE]``."""
    id_, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    try:
        yield _sse(chunk_body(id_, created, model, {"role": "assistant", "content": ""}, with_usage=include_usage))
        item = first
        while not isinstance(item, Completion):
            yield _sse(chunk_body(id_, created, model, {"content": item}, with_usage=include_usage))
            item = next(rest)
        yield _sse(chunk_body(id_, created, model, {}, item.finish_reason, with_usage=include_usage))
        if include_usage:
            yield _sse(chunk_body(id_, created, model, None, usage=usage_body(item), with_usage=True))
        yield "data: [DONE]\n\n"
    except Exception:
        logger.exception("streamed answer failed")
        yield _sse(error_body("the agent failed; see the server's log", "server_error"))
    finally:
        close = getattr(rest, "close", None)
        if close is not None:
            close()


def _model_object(name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": OWNER}


def create_app(models: Sequence[str] | None = None, *, agents: Mapping[str, Agent] | None = None,
               preload: bool = True, threads: int = 1) -> FastAPI:
    """The agents server.

    Args:
        models: names of the agents to serve (default: all of :data:`agents.registry.AGENT_NAMES`);
            ignored when ``agents`` is given.
        agents: ready-made agents by model name, instead of building them from ``models``.
        preload: load every agent's weights at startup (the first request is then not slow);
            False: each loads on its first request.
        threads: torch threads of the LLM agents.

    Raises:
        AgentUnavailable: a name is unknown, or an agent's package is not installed.
        ValueError: no model to serve.
    """
    if agents is None:
        names = list(dict.fromkeys(models if models is not None else AGENT_NAMES))
        agents = {name: build_agent(name, threads=threads) for name in names}
    served = dict(agents)
    if not served:
        raise ValueError("no model to serve")
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        if preload:
            for agent in served.values():
                agent.load()
        yield

    app = FastAPI(title="agent-router agents", version="0.1.0", lifespan=lifespan,
                  description="Local specialist agents behind an OpenAI-compatible API.")
    app.state.agents = served
    _install_error_handlers(app)

    def agent_for(model: str) -> Agent:
        if model not in served:
            raise ModelNotFound(f"The model {model!r} does not exist here; served: {', '.join(served)}")
        return served[model]

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(served)}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_object(name, started) for name in served]}

    @app.get("/v1/models/{model}")
    def get_model(model: str) -> dict[str, Any]:
        agent_for(model)
        return _model_object(model, started)

    @app.post("/v1/chat/completions")
    def chat_completions(body: ChatCompletionRequest):
        agent = agent_for(body.model)
        messages, params = body.to_messages(), body.params()
        if not body.stream:
            done = agent.complete(messages, params)
            return completion_body(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), body.model, done)
        pieces = agent.stream(messages, params)
        first = next(pieces)  # a client's mistake (PromptTooLong) is raised here, answered as an HTTP error
        return StreamingResponse(_events(first, pieces, body.model, body.include_usage),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app
