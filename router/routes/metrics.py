"""``GET /metrics``: the app's Prometheus metrics (:mod:`router.metrics`)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from router.deps import ContextDep

api = APIRouter(tags=["health"])


@api.get(
    "/metrics",
    response_class=Response,
    summary="Prometheus metrics",
    responses={200: {"description": "Metrics in the Prometheus text format.",
                     "content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics_endpoint(request: Request, context: ContextDep) -> Response:
    """Request counts and latencies per endpoint, decisions per agent, the policy version, the
    outbox depth, Redis errors and embedding batch sizes, in the Prometheus text format."""
    await context.metrics.refresh(request.app)
    return Response(context.metrics.render(), media_type=CONTENT_TYPE_LATEST)
