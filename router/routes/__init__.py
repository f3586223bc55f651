"""The HTTP endpoints, one ``APIRouter`` per file (``api`` in each), included by the app factory."""

from __future__ import annotations

from typing import Any

from router.schemas import ErrorResponse


def error_responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for error statuses, each with the :class:`ErrorResponse` body."""
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes}


BODY_ERRORS = ((400, "Malformed JSON body."), (422, "Invalid request."))
STORE_DOWN = (503, "Experience store unavailable; retry after Retry-After seconds.")
