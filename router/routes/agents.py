"""``GET /v1/agents``: the agents of the served policy, with their live state."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError

from router.deps import CooldownsDep, LoadDep, ServiceDep
from router.inflight import LoadSnapshot
from router.schemas import AgentInfo
from router.service import RoutingService

api = APIRouter(tags=["routing"])


def agent_infos(service: RoutingService, snapshot: LoadSnapshot,
                cooling: Mapping[str, float] | None = None) -> list[AgentInfo]:
    """One :class:`AgentInfo` per agent of ``service``, in action order: its record in the
    checkpoint's ``agent_specs`` (name only when it has none or an unusable one), its live
    ``in_flight``, ``load``, ``down`` and ``cooldown_s`` (seconds left, from ``cooling``), and the
    ``capacity`` the policy's load uses."""
    cooling = cooling or {}
    specs: dict[str, dict[str, Any]] = {
        spec["name"]: spec for spec in service.policy.meta.agent_specs if isinstance(spec.get("name"), str)
    }
    load = service.load_vector(snapshot.in_flight)
    out = []
    for k, name in enumerate(service.agents):
        live = {"name": name, "in_flight": int(snapshot.in_flight.get(name, 0)), "load": float(load[k]),
                "down": name in snapshot.down, "capacity": service.capacities[k],
                "cooldown_s": cooling.get(name)}
        try:
            out.append(AgentInfo.model_validate({**specs.get(name, {}), **live}))
        except ValidationError:
            out.append(AgentInfo.model_validate(live))
    return out


@api.get("/v1/agents", response_model=list[AgentInfo], summary="The agents, in action order")
async def agents(service: ServiceDep, load: LoadDep, cooldowns: CooldownsDep) -> list[AgentInfo]:
    """Every agent of the served policy with its description, price and capacity when known, and
    its live state: requests in flight, the load the policy sees, whether it is marked down, and
    how long it still cools down."""
    return agent_infos(service, await load.snapshot(service.agents), await cooldowns.cooling(service.agents))
