"""Cooldowns: collapsing feedback quality takes an agent out of routing on every replica, it
shows at GET /v1/agents and in /metrics, and it comes back on probation (router.cooldown)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import numpy as np
import pytest
import redis

from router.cooldown import CooldownPolicy, LocalCooldowns
from tests.conftest import delete_prefix
from tests.harness import AGENTS

A, B = AGENTS[0], AGENTS[1]


def test_cool_probe_recover_and_cool_again():
    now = [0.0]
    cooled: list[str] = []
    cd = LocalCooldowns(CooldownPolicy(quality=0.1, window=50, min_feedback=3, probe_feedback=2, seconds=10.0,
                                       false_alarm=1e-3), on_cool=cooled.append, clock=lambda: now[0])

    async def feed(*qualities: float) -> None:
        for q in qualities:
            await cd.observe(A, q)

    async def go() -> None:
        await feed(*[0.9] * 10)  # a record of success: s = 11/12
        await feed(0.0, 0.0)
        assert await cd.cooling([A, B]) == {}  # a run of 2: shorter than min_feedback
        await feed(0.0)
        assert (await cd.cooling([A, B])).keys() == {A} and cooled == [A]  # (1/12)^3 <= 1e-3
        await feed(0.0)  # feedback of a decision made before the cooldown: not counted
        now[0] = 10.5
        assert await cd.cooling([A]) == {}  # on probation
        await feed(1.0)  # a success: recovered
        await feed(0.0, 0.0)
        assert await cd.cooling([A]) == {}  # recovered, not probing: a run of 2 is not enough
        await feed(0.0)
        assert (await cd.cooling([A])).keys() == {A}  # the record before the first run was kept
        now[0] = 21.0
        await feed(0.0, 0.0)  # a bad probe: straight back
        assert (await cd.cooling([A])).keys() == {A} and cooled == [A, A, A]

    asyncio.run(go())


def test_a_weak_agent_that_works_is_not_cooled_and_breaks_are_still_caught():
    """An agent of mean quality 0.2 (it fails four times in five) serves 5,000 feedbacks without a
    cooldown; the rule it replaced (a mean of at most 0.05 over the last 10 of 20) cooled it; when it
    breaks (every answer 0), it cools within 60 feedbacks; a good agent that breaks cools in 10."""
    default = CooldownPolicy()
    rng = np.random.default_rng(0)
    weak = (rng.random(5000) < 0.2).astype(float)

    def first_cool(qualities) -> int | None:
        now = [0.0]
        cooled: list[str] = []
        cd = LocalCooldowns(default, on_cool=cooled.append, clock=lambda: now[0])

        async def go() -> int | None:
            for i, q in enumerate(qualities):
                await cd.observe(A, float(q))
                if cooled:
                    return i
            return None

        return asyncio.run(go())

    assert first_cool(weak) is None
    old_rule = [i for i in range(10, len(weak)) if weak[i - 10:i].mean() <= 0.05]
    assert old_rule, "the old rule would have cooled it"
    broken_at = first_cool(np.concatenate([weak[:500], np.zeros(100)]))
    assert broken_at is not None and 500 < broken_at <= 560
    good = (rng.random(500) < 0.8).astype(float)
    assert first_cool(np.concatenate([good, np.zeros(20)])) == 509


@pytest.fixture
def replicas(start_server, checkpoint, redis_url, tmp_path_factory):
    prefix = f"test-{uuid.uuid4().hex}"
    env = {"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": prefix,
           "ROUTER_COOLDOWN_S": "3", "ROUTER_COOLDOWN_MIN_FEEDBACK": "5", "ROUTER_COOLDOWN_PROBE_FEEDBACK": "2",
           "ROUTER_COOLDOWN_FALSE_ALARM": "0.05"}  # no record yet (s = 1/2): 5 failures, 0.5^5 <= 0.05
    servers = [start_server(env | {"ROUTER_OUTBOX_PATH": str(tmp_path_factory.mktemp("outbox") / "o.sqlite3")})
               for _ in range(2)]
    yield prefix, [s.wait_ready() for s in servers]
    delete_prefix(redis_url, prefix)


def test_a_collapsing_agent_cools_down_on_every_replica_and_comes_back(replicas, redis_url):
    prefix, servers = replicas
    one, two = (httpx.Client(base_url=s.url, timeout=30) for s in servers)
    try:
        for _ in range(5):  # A answers badly five times, reported to replica one
            d = one.post("/v1/route", json={"prompt": "what is 2+2", "candidates": [A]}).json()
            assert one.post("/v1/feedback", json={"decision_id": d["decision_id"], "quality": 0.0}).status_code == 202
        info = {a["name"]: a for a in two.get("/v1/agents").json()}
        assert 0 < info[A]["cooldown_s"] <= 3 and info[B]["cooldown_s"] is None
        # the failures the breaker acted on are in the experience log, for the learner
        with redis.Redis.from_url(redis_url, decode_responses=True) as r:
            records = [json.loads(f["record"]) for _, f in r.xrange(f"{prefix}:experience", "-", "+")]
        assert [(rec["agent"], rec["quality"]) for rec in records] == [(A, 0.0)] * 5
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
