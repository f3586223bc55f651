"""``POST /v1/feedback``: how the chosen agent did; 202 only once the record is durable."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from contract.experience import Feedback
from experience.base import utc_now_iso
from router.deps import ContextDep, CooldownsDep, LoadDep, StoreDep
from router.metrics import annotate
from router.routes import BODY_ERRORS, STORE_DOWN, error_responses
from router.schemas import FeedbackRequest, FeedbackResponse

api = APIRouter(tags=["routing"])


@api.post(
    "/v1/feedback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=FeedbackResponse,
    responses=error_responses(
        *BODY_ERRORS,
        STORE_DOWN,
        (404, "Unknown or expired decision_id."),
        (409, "The decision already has feedback."),
    ),
    summary="Report how the chosen agent did",
)
async def feedback(body: FeedbackRequest, request: Request, store: StoreDep, load: LoadDep,
                   cooldowns: CooldownsDep, context: ContextDep) -> FeedbackResponse:
    """Append the experience record (decision context + feedback); 202 only once it is durable. The
    quality also feeds the agent's cooldown (:mod:`router.cooldown`)."""
    annotate(request, decision_id=body.decision_id)
    record = await store.record_feedback(
        body.decision_id,
        Feedback(quality=body.quality, cost_usd=body.cost_usd, latency_ms=body.latency_ms, feedback_at=utc_now_iso()),
    )
    await load.release(record.agent, body.decision_id)
    await cooldowns.observe(record.agent, body.quality)
    context.metrics.observe_feedback(record.agent, body.quality, record.explored_off_greedy)
    return FeedbackResponse(status="accepted", decision_id=body.decision_id)
