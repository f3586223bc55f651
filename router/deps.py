"""FastAPI dependencies of the routes, as ``Annotated`` aliases (``service: ServiceDep``).

They are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a thread hop
per dependency per request. Each reads the app's :class:`~router.context.AppContext`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from experience import ExperienceStore
from experience.agent_changes import AgentChanges
from router.context import AppContext
from router.cooldown import Cooldowns
from router.inflight import LoadTracker
from router.registry import PolicyRegistry
from router.routing import Router
from router.service import RoutingService
from router.settings import Settings


async def get_context(request: Request) -> AppContext:
    """The app's context (set by the lifespan)."""
    return request.app.state.context


ContextDep = Annotated[AppContext, Depends(get_context)]


async def get_settings(context: ContextDep) -> Settings:
    return context.settings


async def get_service(context: ContextDep) -> RoutingService:
    """The service of the served policy, read once when the request starts: a request in flight
    during a hot swap finishes on the policy it started with."""
    return context.registry.current


async def get_registry(context: ContextDep) -> PolicyRegistry:
    return context.registry


async def get_store(context: ContextDep) -> ExperienceStore:
    return context.store


async def get_load(context: ContextDep) -> LoadTracker:
    return context.load


async def get_cooldowns(context: ContextDep) -> Cooldowns:
    return context.cooldowns


async def get_agent_changes(context: ContextDep) -> AgentChanges:
    return context.agent_changes


async def get_router(context: ContextDep) -> Router:
    return context.router


SettingsDep = Annotated[Settings, Depends(get_settings)]
ServiceDep = Annotated[RoutingService, Depends(get_service)]
RegistryDep = Annotated[PolicyRegistry, Depends(get_registry)]
StoreDep = Annotated[ExperienceStore, Depends(get_store)]
LoadDep = Annotated[LoadTracker, Depends(get_load)]
CooldownsDep = Annotated[Cooldowns, Depends(get_cooldowns)]
AgentChangesDep = Annotated[AgentChanges, Depends(get_agent_changes)]
RouterDep = Annotated[Router, Depends(get_router)]
