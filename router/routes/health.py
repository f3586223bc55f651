"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from experience import StoreUnavailable
from router.deps import ContextDep, ServiceDep
from router.routes import error_responses
from router.schemas import HealthResponse, ReadyResponse

api = APIRouter(tags=["health"])


@api.get("/healthz", response_model=HealthResponse, summary="Liveness")
async def healthz(service: ServiceDep) -> HealthResponse:
    """``ok`` and the served policy version."""
    return HealthResponse(status="ok", policy_version=service.version)


@api.get(
    "/readyz",
    response_model=ReadyResponse,
    responses=error_responses((503, "No policy is loaded, or the experience log cannot take writes.")),
    summary="Readiness",
)
async def readyz(context: ContextDep) -> ReadyResponse | JSONResponse:
    """200 when a policy is loaded and the experience log (Redis, or the outbox while Redis is
    unreachable, or SQLite) can take writes; 503 otherwise."""
    try:
        where = await context.store.writable()
    except StoreUnavailable as exc:
        return JSONResponse({"detail": f"the experience log cannot take writes: {exc}"}, status_code=503,
                            headers={"Retry-After": str(context.settings.retry_after_s)})
    return ReadyResponse(status="ready", policy_version=context.service.version, experience_log=where)
