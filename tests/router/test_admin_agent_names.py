"""Agent names with a slash (``mistralai/Mixtral-8x7B-Instruct-v0.1``, as in routellm-evals) reach
the admin agent endpoints whole."""

from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.testclient import TestClient

from router.auth import require_admin
from router.deps import get_load, get_service
from router.routes.admin_agents import api as admin_agents_api


class _Load:
    def __init__(self) -> None:
        self.down: dict[str, bool] = {}

    async def set_down(self, name: str, down: bool) -> None:
        self.down[name] = down


def test_slashed_agent_names_reach_the_admin_endpoints():
    name = "mistralai/Mixtral-8x7B-Instruct-v0.1"
    app = FastAPI()
    app.include_router(admin_agents_api)
    service = SimpleNamespace(agents=[name, "gpt-4-1106-preview"])
    load = _Load()
    app.dependency_overrides[require_admin] = lambda: None
    app.dependency_overrides[get_service] = lambda: service
    app.dependency_overrides[get_load] = lambda: load
    with TestClient(app) as client:
        r = client.post(f"/admin/agents/{name}/down")
        assert r.status_code == 200 and r.json() == {"name": name, "down": True}
        assert load.down == {name: True}
        assert client.post(f"/admin/agents/{name}/up").json() == {"name": name, "down": False}
        assert client.post("/admin/agents/mistralai/other/down").status_code == 404
