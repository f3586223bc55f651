"""Admin endpoints for the agent set (bearer token).

=====================================  =============================================================
``POST /admin/agents/{name}/down``     mark the agent down (a name may hold "/", e.g.
                                       ``mistralai/Mixtral-8x7B-Instruct-v0.1``): no decision picks
                                       it (every replica with Redis, this process without) until
                                       it is marked up
``POST /admin/agents/{name}/up``       mark it up again
``POST /admin/agents``                 add an agent (an agents-file entry: name, price, optional
                                       ``prior_quality``, ..., and optional ``upstream``: where the
                                       proxy calls it); 202: the next retrain round grows the policy
                                       to it and publishes (:mod:`policy.agent_set`), and every
                                       replica's proxy calls it from then on
``DELETE /admin/agents/{name}``        retire an agent: from the next round it is never routed
                                       to; its index and its logged records stay; 202
``GET /admin/agents``                  the recorded changes and the served policy's agent set
=====================================  =============================================================

Down and up are idempotent and answer 200 with the agent's state (``{"name", "down"}``). A change of
the set is recorded once for every replica (:mod:`experience.agent_changes`); until the next round
the policy published before it keeps serving. Errors: 401/403 (:mod:`router.auth`), 404 for a name
that is not an agent (nor a pending one), 409 for a name added or retired already, for retiring the
last agent, or for a policy without a reward critic (it cannot learn a new agent from feedback), 422
for a bad entry (a new agent without the price the policy needs), 503 (``Retry-After``) when Redis
did not take the change (nothing changed). A route whose allowed agents are all down answers 409;
``GET /v1/agents`` shows ``down``.
"""

from __future__ import annotations

from typing import Any, Literal

import anyio
from fastapi import APIRouter, HTTPException, status
from pydantic import BaseModel, Field

from contract.errors import UserError
from env.dataset import AgentSpec
from experience.agent_changes import AgentChangeConflict, AgentChangesUnavailable
from policy.agent_set import AgentExists, AgentSetError, check_new_agent
from router.auth import AdminDep
from router.deps import AgentChangesDep, ContextDep, LoadDep, ServiceDep
from router.routes import error_responses
from router.routes.admin_policy import AUTH
from router.upstreams import UpstreamEntry, make_upstream

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


class NewAgent(AgentSpec):
    """Body of ``POST /admin/agents``: an agents-file entry, and where the proxy calls it."""

    upstream: UpstreamEntry | None = Field(
        None, description="The agent's OpenAI-compatible endpoint, as in ROUTER_UPSTREAMS_FILE (base_url, model, "
        "api_key_env: the name of the variable holding its key on every replica); none: routed, not proxied.")


class AgentChange(BaseModel):
    """Answer of ``POST /admin/agents`` and ``DELETE /admin/agents/{name}``."""

    name: str = Field(description="The agent.")
    change: Literal["add", "retire"]
    status: Literal["pending"] = Field("pending", description="Recorded for every replica; the next retrain "
                                       "round applies it and publishes a policy over the new set.")


class AgentSet(BaseModel):
    """Answer of ``GET /admin/agents``."""

    served_version: str
    agents: list[str] = Field(description="The served policy's agents, in action order.")
    retired: list[str] = Field(description="Those of them retired (never routed to).")
    added: list[dict[str, Any]] = Field(description="Every agent added at run time (agents-file entries).")
    retiring: list[str] = Field(description="Every agent retired at run time.")
    pending: list[str] = Field(description="Recorded changes the served policy lacks (+name, -name).")


async def _changes(call: Any, *args: Any) -> Any:
    try:
        return await anyio.to_thread.run_sync(call, *args)
    except AgentChangeConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except AgentChangesUnavailable as exc:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc), headers={"Retry-After": "1"}) from None


@api.post("/agents", response_model=AgentChange, status_code=status.HTTP_202_ACCEPTED, summary="Add an agent",
          responses=error_responses((409, "An agent of that name exists or was added; or this policy has no "
                                          "reward critic."), (422, "A bad agents-file entry.")))
async def add_agent(spec: NewAgent, service: ServiceDep, changes: AgentChangesDep, context: ContextDep) -> AgentChange:
    """Record a new agent for every replica: the next retrain round appends it to the policy's action
    order, keeps what was learned about the others, and explores it until the critic knows it. With
    an ``upstream``, every replica's proxy calls it from the first policy that routes to it, no
    restart needed."""
    policy = service.policy
    if spec.upstream is not None and context.proxy is not None:
        try:  # its key must be readable here (the message names the variable, never a value)
            make_upstream(spec.name, spec.upstream, {})
        except UserError as exc:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, f"upstream: {exc} on this replica") from None
    if policy.reward_critic is None:
        raise HTTPException(status.HTTP_409_CONFLICT, f"policy {policy.version} has no reward critic: it cannot learn "
                            "a new agent from feedback (start from `agent-router init`, or train with the agent)")
    try:
        check_new_agent(policy, spec)
    except AgentExists as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
    except AgentSetError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, str(exc)) from None
    await _changes(changes.add, spec.model_dump(exclude={"upstream"} if spec.upstream is None else None))
    return AgentChange(name=spec.name, change="add")


@api.delete("/agents/{name:path}", response_model=AgentChange, status_code=status.HTTP_202_ACCEPTED,
            summary="Retire an agent",
            responses=error_responses((409, "Retired already, or the last agent serving.")))
async def retire_agent(name: str, service: ServiceDep, changes: AgentChangesDep) -> AgentChange:
    """Record ``name`` as retired for every replica: from the next round it is never routed to."""
    recorded = await _changes(changes.read)
    added = [a["name"] for a in recorded.added]
    if name not in service.agents and name not in added:
        raise HTTPException(status.HTTP_404_NOT_FOUND,
                            f"unknown agent {name!r}; the agents are {', '.join([*service.agents, *added])}")
    retired = set(service.policy.meta.retired) | set(recorded.retired)
    if name in retired:
        raise HTTPException(status.HTTP_409_CONFLICT, f"agent {name!r} is retired already")
    serving = set(service.agents) | set(added)
    if len(serving - retired - {name}) < 1:
        raise HTTPException(status.HTTP_409_CONFLICT, f"agent {name!r} is the last one serving: add another first")
    await _changes(changes.retire, name)
    return AgentChange(name=name, change="retire")


@api.get("/agents", response_model=AgentSet, summary="The agent set and its recorded changes")
async def agent_set(service: ServiceDep, changes: AgentChangesDep) -> AgentSet:
    """The served policy's agents and retired agents, every recorded change, and those it lacks."""
    recorded = await _changes(changes.read)
    meta = service.policy.meta
    pending = [f"+{a['name']}" for a in recorded.added if a["name"] not in meta.agents]
    pending += [f"-{n}" for n in recorded.retired if n not in meta.retired]
    return AgentSet(served_version=service.version, agents=list(meta.agents), retired=list(meta.retired),
                    added=recorded.added, retiring=recorded.retired, pending=pending)
