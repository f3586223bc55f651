"""Admin endpoints that take a specialist agent out of routing and put it back (bearer token).

=====================================  =============================================================
``POST /admin/agents/{name}/down``     mark the agent down (a name may hold "/", e.g.
                                       ``mistralai/Mixtral-8x7B-Instruct-v0.1``): no decision picks
                                       it (every replica with Redis, this process without) until
                                       it is marked up
``POST /admin/agents/{name}/up``       mark it up again
=====================================  =============================================================

Both are idempotent and answer 200 with the agent's state (``{"name", "down"}``). Errors: 401/403
(:mod:`router.auth`), 404 for a name that is not an agent of the served policy, 503
(``Retry-After``) when Redis did not take the change (nothing changed). A route whose allowed
agents (its ``candidates``, or all) are all down answers 409; ``GET /v1/agents`` shows ``down``.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from router.auth import AdminDep
from router.deps import LoadDep, ServiceDep
from router.routes import error_responses
from router.routes.admin_policy import AUTH

api = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[AdminDep],
    responses=error_responses(
        *AUTH,
        (404, "No agent of that name in the served policy."),
        (503, "Redis did not take the change; nothing changed. Retry after Retry-After seconds."),
    ),
)


class AgentState(BaseModel):
    """Body of ``POST /admin/agents/{name}/down`` and ``/up``."""

    name: str = Field(description="The agent.")
    down: bool = Field(description="True while the agent is marked down (masked out of every decision).")


def _check_agent(service: ServiceDep, name: str) -> str:
    if name not in service.agents:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"unknown agent {name!r}; the agents are {', '.join(service.agents)}")
    return name


@api.post("/agents/{name:path}/down", response_model=AgentState, summary="Take an agent out of routing")
async def agent_down(name: str, service: ServiceDep, load: LoadDep) -> AgentState:
    """Mark ``name`` down for every replica; decisions fall back to the next most probable agent."""
    await load.set_down(_check_agent(service, name), True)
    return AgentState(name=name, down=True)


@api.post("/agents/{name:path}/up", response_model=AgentState, summary="Put an agent back into routing")
async def agent_up(name: str, service: ServiceDep, load: LoadDep) -> AgentState:
    """Mark ``name`` up again."""
    await load.set_down(_check_agent(service, name), False)
    return AgentState(name=name, down=False)
