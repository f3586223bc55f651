"""``POST /v1/route``: choose the agent for a prompt."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from router.decide import decide
from router.deps import BatcherDep, CooldownsDep, LoadDep, MetricsDep, ServiceDep, SettingsDep, StoreDep
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
async def route(
    body: RouteRequest,
    request: Request,
    settings: SettingsDep,
    service: ServiceDep,
    store: StoreDep,
    batcher: BatcherDep,
    load: LoadDep,
    cooldowns: CooldownsDep,
    metrics: MetricsDep,
) -> RouteResponse:
    """Embed the prompt, run the policy (masked to ``candidates``), persist the decision context,
    and return the chosen agent with the full distribution."""
    if len(body.prompt) > settings.max_prompt_chars:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT,
            f"prompt has {len(body.prompt)} characters; the limit is {settings.max_prompt_chars}",
        )
    # bad candidates, cost_weight or budget: 422 before any encoding
    service.request_mask(body.prompt, body.candidates, body.cost_weight, body.max_cost_usd_per_1k)
    embedding = await batcher.embed(service.embedder, body.prompt)  # micro-batched, LRU-cached
    decision = await decide(service, body.prompt, embedding, settings=settings, store=store, load=load,
                            cooldowns=cooldowns, metrics=metrics, candidates=body.candidates,
                            explore=body.explore, session_id=body.session_id, cost_weight=body.cost_weight,
                            max_cost_usd_per_1k=body.max_cost_usd_per_1k)
    annotate(request, decision_id=decision.decision_id, agent=decision.agent, policy_version=service.version)
    return RouteResponse(
        decision_id=decision.decision_id,
        agent=decision.agent,
        probabilities={name: float(p) for name, p in zip(service.agents, decision.probabilities, strict=True)},
        policy_version=service.version,
        propensity=decision.propensity,
        cost_weight=decision.cost_weight,
    )
