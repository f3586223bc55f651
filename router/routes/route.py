"""``POST /v1/route``: choose the agent for a prompt."""

from __future__ import annotations

from fastapi import APIRouter, Request

from router.deps import RouterDep
from router.metrics import annotate
from router.routes import BODY_ERRORS, STORE_DOWN, error_responses
from router.schemas import RouteRequest, RouteResponse

api = APIRouter(tags=["routing"])


@api.post(
    "/v1/route",
    response_model=RouteResponse,
    responses=error_responses(
        *BODY_ERRORS, STORE_DOWN, (409, "Every allowed agent is marked down (POST /admin/agents/...).")
    ),
    summary="Choose the agent for a prompt",
)
async def route(body: RouteRequest, request: Request, router: RouterDep) -> RouteResponse:
    """Embed the prompt, run the policy (masked to ``candidates``), persist the decision context,
    and return the chosen agent with the full distribution."""
    routing = router.plan(body.prompt, candidates=body.candidates, cost_weight=body.cost_weight,
                          max_cost_usd_per_1k=body.max_cost_usd_per_1k, explore=body.explore,
                          session_id=body.session_id)  # 422 before any encoding
    decision = await router.decide(routing)
    service = routing.service
    annotate(request, decision_id=decision.decision_id, agent=decision.agent, policy_version=service.version,
             stages_ms=routing.stages_ms())
    return RouteResponse(
        decision_id=decision.decision_id,
        agent=decision.agent,
        probabilities={name: float(p) for name, p in zip(service.agents, decision.probabilities, strict=True)},
        policy_version=service.version,
        propensity=decision.propensity,
        cost_weight=decision.cost_weight,
    )
