"""``GET /readyz``: ready when a policy is loaded and the experience log can take writes."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from experience import StoreUnavailable
from router.deps import get_context
from router.routes import health


def test_ready_with_sqlite(sqlite_server):
    r = httpx.get(f"{sqlite_server.url}/readyz", timeout=30)
    assert r.status_code == 200
    assert r.json() == {"status": "ready", "policy_version": r.json()["policy_version"], "experience_log": "sqlite"}


@pytest.mark.redis
def test_ready_with_redis(redis_server):
    server, _ = redis_server
    assert httpx.get(f"{server.url}/readyz", timeout=30).json()["experience_log"] == "redis"


def test_ready_on_the_outbox_while_redis_is_down(redis_down_server):
    r = httpx.get(f"{redis_down_server.url}/readyz", timeout=30)
    assert r.status_code == 200 and r.json()["experience_log"] == "outbox"


def test_not_ready_when_nothing_takes_writes():
    class Unwritable:
        async def writable(self) -> str:
            raise StoreUnavailable("disk full")

    app = FastAPI()
    app.include_router(health.api)
    context = SimpleNamespace(store=Unwritable(), settings=SimpleNamespace(retry_after_s=3),
                              service=SimpleNamespace(version="v1"))
    app.dependency_overrides[get_context] = lambda: context
    with TestClient(app) as client:
        r = client.get("/readyz")
    assert r.status_code == 503 and r.headers["retry-after"] == "3"
    assert "cannot take writes" in r.json()["detail"]
