"""Admin endpoints that take a specialist agent out of routing and put it back (bearer token).

=====================================  =============================================================
``POST /admin/agents/{name}/down``     mark the agent down (a name may hold "/", e.g.
                                       ``mistralai/Mixtral-8x7B-Instruct-v0.1``): no decision picks it (every replica
                                       with Redis, this process without) until it is marked up
``POST /admin/agents/{name}/up``       mark it up again
=====================================  =============================================================

Both are idempotent and answer 200 with the agent's state (``{"name", "down"}``). Errors: 401/403
without the right token, 404 for a name that is not an agent of the served policy, 503
(``Retry-After``) when Redis did not take the change (nothing changed). A route whose allowed
agents (its ``candidates``, or all) are all down answers 409; ``GET /v1/agents`` shows ``down``.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Request, status
from pydantic import BaseModel, Field

from router.auth import require_admin
from router.load import LoadTracker, get_load_tracker
from router.schemas import ErrorResponse


class AgentState(BaseModel):
    """Body of ``POST /admin/agents/{name}/down`` and ``/up``."""

    name: str = Field(description="The agent.")
    down: bool = Field(description="True while the agent is marked down (masked out of every decision).")


def _responses(*codes: tuple[int, str]) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse, "description": text} for code, text in codes}


router = APIRouter(
    prefix="/admin",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=_responses(
        (401, "Missing or malformed 'Authorization: Bearer <token>'."),
        (403, "Wrong admin token."),
        (404, "No agent of that name in the served policy."),
        (503, "Redis did not take the change; nothing changed. Retry after Retry-After seconds."),
    ),
)


def _check_agent(request: Request, name: str) -> str:
    agents = list(request.app.state.service.agents)
    if name not in agents:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"unknown agent {name!r}; the agents are {', '.join(agents)}")
    return name


@router.post("/agents/{name:path}/down", response_model=AgentState, summary="Take an agent out of routing")
async def agent_down(name: str, request: Request, load: LoadTracker = Depends(get_load_tracker)) -> AgentState:
    """Mark ``name`` down for every replica; decisions fall back to the next most probable agent."""
    await load.set_down(_check_agent(request, name), True)
    return AgentState(name=name, down=True)


@router.post("/agents/{name:path}/up", response_model=AgentState, summary="Put an agent back into routing")
async def agent_up(name: str, request: Request, load: LoadTracker = Depends(get_load_tracker)) -> AgentState:
    """Mark ``name`` up again."""
    await load.set_down(_check_agent(request, name), False)
    return AgentState(name=name, down=False)
