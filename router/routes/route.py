"""``POST /v1/route``: choose the agent for a prompt."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request, status

from router.deps import BatcherDep, CooldownsDep, LoadDep, ServiceDep, SettingsDep, StoreDep
from router.metrics import note_decision
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
    live = await load.snapshot(service.agents)
    down = live.down | set(await cooldowns.cooling(service.agents))  # marked down, or cooling down
    if set(body.candidates or service.agents) <= down:
        down = live.down  # every allowed agent cools down: route among them rather than refuse
    cost_weight = body.cost_weight
    if cost_weight is None and body.max_cost_usd_per_1k is None and service.policy.layout.cost_preference:
        cost_weight = settings.cost_weight
    decision = service.route(body.prompt, body.candidates, body.explore, embedding=embedding,
                             in_flight=live.in_flight, down=down, explore_floor=settings.explore_floor,
                             explore_temperature=settings.explore_temperature,
                             cost_weight=cost_weight, max_cost_usd_per_1k=body.max_cost_usd_per_1k)
    note_decision(request, decision.decision_id, decision.agent, service.version)
    await store.put_decision(
        service.decision_context(decision, body.prompt, body.session_id, store_prompt=settings.store_prompts)
    )
    await load.take(decision.agent, decision.decision_id)
    return RouteResponse(
        decision_id=decision.decision_id,
        agent=decision.agent,
        probabilities={name: float(p) for name, p in zip(service.agents, decision.probabilities, strict=True)},
        policy_version=service.version,
        propensity=decision.propensity,
        cost_weight=decision.cost_weight,
    )
