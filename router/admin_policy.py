"""Admin endpoints of the served policy: show it, reload a checkpoint, roll back (bearer token).

=====================================  =============================================================
``GET /admin/policy``                  the policy this replica serves, and the previous one
``POST /admin/policy/reload``          ``{"checkpoint": "<version name or path>"}`` or no body (the
                                       newest version under ``ROUTER_CHECKPOINT``): load, validate,
                                       publish to every replica (Redis), swap; 200 once done here
``POST /admin/policy/rollback``        swap back to the previous policy (and publish it)
=====================================  =============================================================

Errors: 401/403 without the right token, 404 unknown version or path, 422 a checkpoint that is
refused (corrupt, other agents or embedding model, non-finite output), 409 rollback without a
previous policy, 503 (``Retry-After``) when Redis did not take the new version. After any error
the old policy keeps serving.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, HTTPException, Request, status

from router.auth import require_admin
from router.registry import PolicyRefused, PolicyRegistry, PublishFailed
from router.schemas import ErrorResponse, PolicyInfo, PolicyReloadRequest
from router.service import RoutingService


def _responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes}


_AUTH = ((401, "Missing or malformed 'Authorization: Bearer <token>'."), (403, "Wrong admin token."))
_PUBLISH = (503, "Redis did not take the new version; nothing changed. Retry after Retry-After seconds.")

router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   responses=_responses(*_AUTH))


def get_registry(request: Request) -> PolicyRegistry:
    """The app's :class:`PolicyRegistry`."""
    return request.app.state.registry


def policy_info(registry: PolicyRegistry, service: RoutingService | None = None) -> PolicyInfo:
    """:class:`PolicyInfo` of ``service`` (default: the registry's current one)."""
    service = service or registry.current
    meta = service.policy.meta
    previous = registry.previous if service is registry.current else None
    created = meta.get("created_at")
    return PolicyInfo(
        version=service.version,
        path=str(service.policy.path),
        created_at=str(created) if created is not None else None,
        loaded_at=registry.loaded_at,
        agents=list(service.agents),
        embedding_model=service.policy.embedding_model,
        weights_sha256=meta.get("weights_sha256"),
        previous_version=previous.version if previous is not None else None,
        follows_redis=registry.publisher is not None,
    )


def _http_error(exc: Exception, request: Request) -> HTTPException:
    if isinstance(exc, PublishFailed):
        settings = getattr(request.app.state, "settings", None)
        retry = settings.retry_after_s if settings is not None else 1
        return HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, f"{exc}; still serving the old policy",
                             headers={"Retry-After": str(retry)})
    assert isinstance(exc, PolicyRefused)
    return HTTPException(exc.status_code, str(exc))


@router.get("/policy", response_model=PolicyInfo, summary="The served policy")
async def show_policy(registry: PolicyRegistry = Depends(get_registry)) -> PolicyInfo:
    """Version, path, creation and load times, agents and the previous version of this replica."""
    return policy_info(registry)


@router.post(
    "/policy/reload",
    response_model=PolicyInfo,
    responses=_responses(
        (404, "No checkpoint under that version name or path."),
        (422, "The checkpoint is refused (corrupt, unfitting, non-finite output), or a bad body."),
        _PUBLISH,
    ),
    summary="Load a checkpoint and make every replica serve it",
)
async def reload_policy(
    request: Request,
    body: PolicyReloadRequest | None = Body(None),
    registry: PolicyRegistry = Depends(get_registry),
) -> PolicyInfo:
    """Load and validate off the request path, publish (Redis), then swap; requests in flight
    finish on the policy they started with. A refused checkpoint changes nothing."""
    try:
        service = await registry.reload(body.checkpoint if body is not None else None)
    except (PolicyRefused, PublishFailed) as exc:
        raise _http_error(exc, request) from None
    return policy_info(registry, service)


@router.post(
    "/policy/rollback",
    response_model=PolicyInfo,
    responses=_responses((409, "No previous policy in this process."), _PUBLISH),
    summary="Swap back to the previous policy (on every replica)",
)
async def rollback_policy(request: Request, registry: PolicyRegistry = Depends(get_registry)) -> PolicyInfo:
    """Make the previous policy current again, and publish it."""
    try:
        service = await registry.rollback()
    except (PolicyRefused, PublishFailed) as exc:
        raise _http_error(exc, request) from None
    return policy_info(registry, service)
