"""Bearer-token guard of the admin endpoints (``ROUTER_ADMIN_TOKEN``).

Compared in constant time (:func:`secrets.compare_digest`). With no token configured the admin
endpoints are open, and :func:`warn_if_open` logs a warning at start-up.
"""

from __future__ import annotations

import logging
import secrets

from fastapi import HTTPException, Request, status
from pydantic import SecretStr

logger = logging.getLogger(__name__)


def warn_if_open(token: SecretStr | None) -> None:
    """Log a warning when no admin token is configured (None or empty)."""
    if token is None or not token.get_secret_value():
        logger.warning("ROUTER_ADMIN_TOKEN is not set: the /admin endpoints are open to anyone who can reach "
                       "this server")


def require_admin(request: Request) -> None:
    """FastAPI dependency: 401 without ``Authorization: Bearer <token>``, 403 with a wrong token.

    Raises:
        HTTPException: 401 (missing or malformed header) or 403 (wrong token).
    """
    configured = request.app.state.settings.admin_token
    if configured is None or not configured.get_secret_value():
        return
    header = request.headers.get("authorization", "")
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin endpoints need 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.strip().encode(), configured.get_secret_value().encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")
