"""Errors as JSON responses ``{"detail": "..."}``: domain errors carry their HTTP status.

A :class:`DomainError` subclass names its ``status_code`` (and ``retry_after`` for a 503 that is
safe to retry); one handler answers all of them. Besides those:

=================================  ======  =============================================
exception                          status  note
=================================  ======  =============================================
malformed JSON body                400     also a body that is not UTF-8
other request validation errors    422     also ``errors``: ``[{loc, msg, type}]``; 400 in OpenAI's
                                           shape on the proxy's paths (:data:`OPENAI_PATHS`)
``HTTPException``                  its own
anything else                      500     logged with its traceback
=================================  ======  =============================================
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from contract.errors import DomainError

logger = logging.getLogger(__name__)

_FASTAPI_BODY_ERROR = "There was an error parsing the body"

#: Paths that answer errors in OpenAI's shape (the proxy's), for OpenAI's client libraries.
OPENAI_PATHS = ("/v1/chat/completions", "/v1/models")


def openai_error_body(message: str, type: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _where(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = list(loc)
    if parts and parts[0] == "body":
        parts = parts[1:]
        if not parts:
            return "request body"
    return ".".join(str(p) for p in parts) or "request"


def _message(error: dict[str, Any]) -> str:
    if tuple(error.get("loc", ())) == ("body",):
        if error.get("type") == "missing":
            return "missing; send a JSON object with Content-Type: application/json"
        if error.get("type") == "model_attributes_type":
            return "expected a JSON object (with Content-Type: application/json)"
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def describe_validation_errors(errors: list[dict[str, Any]]) -> str:
    """One readable line for pydantic errors, e.g. ``"quality: Input should be ... 1"``."""
    return "; ".join(f"{_where(e.get('loc', ()))}: {_message(e)}" for e in errors)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            loc = error.get("loc", ())
            at = f" at character {loc[1]}" if len(loc) > 1 else ""
            message = f"malformed JSON body: {reason}{at}"
            if request.url.path in OPENAI_PATHS:
                return JSONResponse(openai_error_body(message, "invalid_request_error"), status_code=400)
            return JSONResponse({"detail": message}, status_code=400)
    if request.url.path in OPENAI_PATHS:  # OpenAI answers 400 for a request it cannot take
        param = ".".join(str(p) for p in errors[0].get("loc", ())[1:]) if errors else None
        return JSONResponse(openai_error_body(describe_validation_errors(errors), "invalid_request_error",
                                              param=param or None), status_code=400)
    summary = [
        {"loc": list(e.get("loc", ())), "msg": _message(e), "type": e.get("type", "")}
        for e in errors
    ]
    return JSONResponse(
        {"detail": describe_validation_errors(errors), "errors": summary}, status_code=422
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and exc.detail == _FASTAPI_BODY_ERROR:
        # FastAPI's answer to a body that cannot even be decoded (e.g. not UTF-8).
        exc = StarletteHTTPException(400, "malformed JSON body: cannot decode it as UTF-8 JSON")
    return await http_exception_handler(request, exc)


def retry_after_s(request: Request) -> int:
    """``ROUTER_RETRY_AFTER_S`` of the app serving ``request`` (1 before start-up finished)."""
    context = getattr(request.app.state, "context", None)
    return context.settings.retry_after_s if context is not None else 1


async def _domain_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DomainError)
    headers = {"Retry-After": str(retry_after_s(request))} if exc.retry_after else None
    if exc.status_code >= 500:
        logger.warning("%s: %s", type(exc).__name__, exc)
    detail = exc.public_detail if exc.public_detail is not None else str(exc)
    return JSONResponse({"detail": detail}, status_code=exc.status_code, headers=headers)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(DomainError, _domain_error)
    app.add_exception_handler(Exception, _internal_error)
