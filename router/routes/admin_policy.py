"""Admin endpoints of the served policy: show it, reload a version, roll back (bearer token).

=====================================  =============================================================
``GET /admin/policy``                  the policy this replica serves, and the previous one
``POST /admin/policy/reload``          ``{"checkpoint": "<version name>"}`` or no body (the newest
                                       version under ``ROUTER_CHECKPOINT``): load, validate,
                                       publish to every replica (Redis), swap; 200 once done here
``POST /admin/policy/rollback``        swap back to the previous policy (and publish it)
=====================================  =============================================================

Errors: 401/403 (:mod:`router.auth`), 404 no such version (a path, or anything outside the
checkpoint root, gets one message whether or not it exists), 422 a checkpoint that is refused
(corrupt, other agents or embedding model, non-finite output), 409 rollback without a previous
policy, 503 (``Retry-After``) when Redis did not take the new version. After any error the old
policy keeps serving.
"""

from __future__ import annotations

from fastapi import APIRouter, Body

from router.auth import AdminDep
from router.deps import RegistryDep
from router.registry import PolicyRegistry
from router.routes import error_responses
from router.schemas import PolicyInfo, PolicyReloadRequest
from router.service import RoutingService

AUTH = ((401, "Missing or malformed 'Authorization: Bearer <token>'."),
        (403, "No admin token configured (admin closed), or a wrong token."))
PUBLISH = (503, "Redis did not take the new version; nothing changed. Retry after Retry-After seconds.")

api = APIRouter(prefix="/admin", tags=["admin"], dependencies=[AdminDep], responses=error_responses(*AUTH))


def policy_info(registry: PolicyRegistry, service: RoutingService | None = None) -> PolicyInfo:
    """:class:`PolicyInfo` of ``service`` (default: the registry's current one)."""
    service = service or registry.current
    meta = service.policy.meta
    previous = registry.previous if service is registry.current else None
    return PolicyInfo(
        version=service.version,
        path=str(service.policy.path),
        created_at=meta.created_at,
        loaded_at=registry.loaded_at,
        agents=list(service.agents),
        embedding_model=service.policy.embedding_model,
        weights_sha256=meta.weights_sha256,
        previous_version=previous.version if previous is not None else None,
        follows_redis=registry.publisher is not None,
    )


@api.get("/policy", response_model=PolicyInfo, summary="The served policy")
async def show_policy(registry: RegistryDep) -> PolicyInfo:
    """Version, path, creation and load times, agents and the previous version of this replica."""
    return policy_info(registry)


@api.post(
    "/policy/reload",
    response_model=PolicyInfo,
    responses=error_responses(
        (404, "No policy version of that name under the checkpoint root."),
        (422, "The checkpoint is refused (corrupt, unfitting, non-finite output), or a bad body."),
        PUBLISH,
    ),
    summary="Load a version and make every replica serve it",
)
async def reload_policy(registry: RegistryDep, body: PolicyReloadRequest | None = Body(None)) -> PolicyInfo:
    """Load and validate off the request path, publish (Redis), then swap; requests in flight
    finish on the policy they started with. A refused checkpoint changes nothing."""
    service = await registry.reload(body.checkpoint if body is not None else None)
    return policy_info(registry, service)


@api.post(
    "/policy/rollback",
    response_model=PolicyInfo,
    responses=error_responses((409, "No previous policy in this process."), PUBLISH),
    summary="Swap back to the previous policy (on every replica)",
)
async def rollback_policy(registry: RegistryDep) -> PolicyInfo:
    """Make the previous policy current again, and publish it."""
    return policy_info(registry, await registry.rollback())
