"""Bearer-token guard of the admin endpoints (``ROUTER_ADMIN_TOKEN``), closed by default.

With a token set, a request needs ``Authorization: Bearer <token>`` (compared in constant time,
:func:`secrets.compare_digest`): 401 without it, 403 with a wrong one. With no token the admin
endpoints answer 403, unless ``ROUTER_ADMIN_OPEN=true``, which the settings accept only on a
loopback bind, and which then opens them to loopback clients only. The scheme is FastAPI's
:class:`~fastapi.security.HTTPBearer`, so OpenAPI documents it.
"""

from __future__ import annotations

import logging
import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from router.deps import SettingsDep
from router.settings import Settings, is_loopback

logger = logging.getLogger(__name__)

bearer = HTTPBearer(auto_error=False, scheme_name="adminToken",
                    description="The server's ROUTER_ADMIN_TOKEN, as 'Authorization: Bearer <token>'.")

CLOSED = ("the admin endpoints are closed: start the server with ROUTER_ADMIN_TOKEN=<secret> and send "
          "'Authorization: Bearer <secret>' (or, for local use on a loopback bind, ROUTER_ADMIN_OPEN=true)")


def log_admin_mode(settings: Settings) -> None:
    """Say at start-up how the admin endpoints are guarded (never the token)."""
    if settings.admin_token is not None and settings.admin_token.get_secret_value():
        return
    if settings.admin_open:
        logger.warning("ROUTER_ADMIN_OPEN=true: the /admin endpoints are open to clients on this machine")
    else:
        logger.info("ROUTER_ADMIN_TOKEN is not set: the /admin endpoints answer 403")


async def require_admin(
    request: Request,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    """FastAPI dependency of every ``/admin`` route.

    Raises:
        HTTPException: 403 when no token is configured (and the admin is not opened, or the client
            is not on loopback) or the token is wrong; 401 when the header is missing or malformed.
    """
    configured = settings.admin_token
    if configured is None or not configured.get_secret_value():
        client = request.client.host if request.client is not None else None
        if settings.admin_open and is_loopback(client):
            return
        raise HTTPException(status.HTTP_403_FORBIDDEN, CLOSED)
    if credentials is None or not credentials.credentials:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "admin endpoints need 'Authorization: Bearer <token>'",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.strip().encode(), configured.get_secret_value().encode()):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "wrong admin token")


AdminDep = Depends(require_admin)
