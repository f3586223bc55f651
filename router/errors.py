"""Mapping of exceptions to JSON error responses ``{"detail": "..."}``.

=================================  ======  =============================================
exception                          status  note
=================================  ======  =============================================
malformed JSON body                400     also a body that is not UTF-8
other request validation errors    422     also ``errors``: ``[{loc, msg, type}]``
``UserError`` (bad candidates...)  422
``UnknownDecision``                404
``DuplicateFeedback``              409
``NoAgentAvailable``               409     every allowed agent is marked down
``StoreUnavailable``               503     ``Retry-After: <settings.retry_after_s>``
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

from env.errors import UserError
from router.experience.base import DuplicateFeedback, StoreUnavailable, UnknownDecision
from router.load import NoAgentAvailable

logger = logging.getLogger(__name__)

_FASTAPI_BODY_ERROR = "There was an error parsing the body"


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
            return JSONResponse({"detail": f"malformed JSON body: {reason}{at}"}, status_code=400)
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


async def _user_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=422)


async def _unknown_decision(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=404)


async def _duplicate_feedback(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _no_agent_available(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=409)


async def _store_unavailable(request: Request, exc: Exception) -> JSONResponse:
    settings = getattr(request.app.state, "settings", None)
    retry_after = settings.retry_after_s if settings is not None else 1
    logger.warning("experience store unavailable: %s", exc)
    return JSONResponse(
        {"detail": "the experience store is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": str(retry_after)},
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": "internal server error"}, status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers of the table above on ``app``."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(UserError, _user_error)
    app.add_exception_handler(UnknownDecision, _unknown_decision)
    app.add_exception_handler(DuplicateFeedback, _duplicate_feedback)
    app.add_exception_handler(NoAgentAvailable, _no_agent_available)
    app.add_exception_handler(StoreUnavailable, _store_unavailable)
    app.add_exception_handler(Exception, _internal_error)
