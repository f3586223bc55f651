"""Cooldowns: collapsing feedback quality takes an agent out of routing on every replica, it
shows at GET /v1/agents and in /metrics, and it comes back on probation (router.cooldown)."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest

from router.cooldown import CooldownPolicy, LocalCooldowns
from tests.conftest import delete_prefix
from tests.harness import AGENTS

A, B = AGENTS[0], AGENTS[1]


def test_cool_probe_recover_and_cool_again():
    now = [0.0]
    cooled: list[str] = []
    cd = LocalCooldowns(CooldownPolicy(quality=0.1, window=5, min_feedback=3, probe_feedback=2, seconds=10.0),
                        on_cool=cooled.append, clock=lambda: now[0])

    async def feed(*qualities: float) -> None:
        for q in qualities:
            await cd.observe(A, q)

    async def go() -> None:
        await feed(0.9, 0.0, 0.0)
        assert await cd.cooling([A, B]) == {}  # mean 0.3 over 3: above the threshold
        await feed(0.0, 0.0)
        assert await cd.cooling([A, B]) == {}  # the window of 5 still holds the 0.9: mean 0.18
        await feed(0.0)
        assert (await cd.cooling([A, B])).keys() == {A} and cooled == [A]  # five zeros
        now[0] = 10.5
        assert await cd.cooling([A]) == {}  # on probation
        await feed(1.0, 0.8)  # a good probe: recovered
        await feed(0.0, 0.0, 0.0, 0.0)
        assert await cd.cooling([A]) == {}  # the good probe is still in the window: mean 0.16
        await feed(0.0)
        assert (await cd.cooling([A])).keys() == {A}
        now[0] = 21.0
        await feed(0.0, 0.0)  # a bad probe: straight back
        assert (await cd.cooling([A])).keys() == {A} and cooled == [A, A, A]

    asyncio.run(go())


@pytest.fixture
def replicas(start_server, checkpoint, redis_url, tmp_path_factory):
    prefix = f"test-{uuid.uuid4().hex}"
    env = {"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": prefix,
           "ROUTER_COOLDOWN_S": "3", "ROUTER_COOLDOWN_MIN_FEEDBACK": "5", "ROUTER_COOLDOWN_PROBE_FEEDBACK": "2"}
    servers = [start_server(env | {"ROUTER_OUTBOX_PATH": str(tmp_path_factory.mktemp("outbox") / "o.sqlite3")})
               for _ in range(2)]
    yield [s.wait_ready() for s in servers]
    delete_prefix(redis_url, prefix)


def test_a_collapsing_agent_cools_down_on_every_replica_and_comes_back(replicas):
    one, two = (httpx.Client(base_url=s.url, timeout=30) for s in replicas)
    try:
        for _ in range(5):  # A answers badly five times, reported to replica one
            d = one.post("/v1/route", json={"prompt": "what is 2+2", "candidates": [A]}).json()
            assert one.post("/v1/feedback", json={"decision_id": d["decision_id"], "quality": 0.0}).status_code == 202
        info = {a["name"]: a for a in two.get("/v1/agents").json()}
        assert 0 < info[A]["cooldown_s"] <= 3 and info[B]["cooldown_s"] is None
        picks = {two.post("/v1/route", json={"prompt": f"question {i}", "candidates": [A, B]}).json()["agent"]
                 for i in range(10)}
        assert picks == {B}  # replica two's mask leaves A out
        assert f'router_agent_cooldown_seconds{{agent="{A}"}}' in two.get("/metrics").text
        assert f'router_agent_cooldowns_total{{agent="{A}"}} 1.0' in one.get("/metrics").text
        # only A allowed while it cools down: routed anyway rather than refused
        assert two.post("/v1/route", json={"prompt": "x", "candidates": [A]}).json()["agent"] == A
        deadline = time.monotonic() + 10
        while {a["name"]: a for a in one.get("/v1/agents").json()}[A]["cooldown_s"] is not None:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for _ in range(2):  # the probe goes well: A stays in
            d = two.post("/v1/route", json={"prompt": "2+2", "candidates": [A]}).json()
            assert two.post("/v1/feedback", json={"decision_id": d["decision_id"], "quality": 1.0}).status_code == 202
        assert {a["name"]: a for a in one.get("/v1/agents").json()}[A]["cooldown_s"] is None
    finally:
        one.close()
        two.close()
