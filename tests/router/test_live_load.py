"""Live load (in-flight leases) in the observation, agents down, masks and fallbacks."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import numpy as np
import pytest
import redis

from contract.observation import normalised_load
from router.inflight import LocalLoadTracker, NoAgentAvailable, RedisLoadTracker
from router.service import live_mask
from tests.harness import AGENTS
from tests.router.live_fixtures import ADMIN_TOKEN, CAPACITIES, LOAD_CLIP

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


# --- pure functions -----------------------------------------------------------------------


def test_load_is_the_backlog_beyond_capacity_in_steps_clipped():
    caps = [2, None, 1, 4]
    assert normalised_load([0, 0, 0, 0], caps, 4.0).tolist() == [0, 0, 0, 0]
    # within capacity: no backlog (an env queue that cleared); beyond: (n - c) / c steps; clipped
    assert normalised_load([2, 50, 2, 6], caps, 4.0).tolist() == [0.0, 0.0, 1.0, 0.5]
    assert normalised_load([5, 0, 9, 100], caps, 4.0).tolist() == [1.5, 0.0, 4.0, 4.0]
    assert normalised_load([5, 0, 9, 100], caps, 4.0).dtype == np.float32
    with pytest.raises(ValueError):
        normalised_load([1], caps, 4.0)


def test_load_matches_prompt_env_queue_dynamics():
    """One env step with ``in_flight`` arrivals on empty queues gives the serving load."""
    import torch

    from env.config import EnvConfig
    from env.prompt_env import PromptEnv

    caps, arrivals = [2, 1, None], [5, 1, 3]
    env = PromptEnv(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(4, 3), caps,
                    EnvConfig(num_worlds=1, num_routers=sum(arrivals), episode_len=8, load_clip=4.0))
    env.reset(seed=0)
    action = torch.tensor([[k for k, n in enumerate(arrivals) for _ in range(n)]])
    env.step(action)
    assert env.load()[0].tolist() == normalised_load(arrivals, caps, 4.0).tolist()


def test_live_mask_removes_down_agents_and_409s_when_nothing_is_left():
    agents = ["a", "b", "c"]
    everyone = np.ones(3, dtype=bool)
    assert live_mask(agents, everyone, set(), None) is everyone
    assert live_mask(agents, everyone, {"b"}, None).tolist() == [True, False, True]
    only_b = np.array([False, True, False])
    with pytest.raises(NoAgentAvailable, match=r"every candidate is marked down \('b'\); agents up: a, c"):
        live_mask(agents, only_b, {"b"}, ["b"])
    with pytest.raises(NoAgentAvailable, match="every agent is marked down"):
        live_mask(agents, everyone, set(agents), None)


def test_local_tracker_leases_release_and_expire():
    now = [100.0]
    tracker = LocalLoadTracker(ttl_s=10, clock=lambda: now[0])

    async def run():
        await tracker.take("a", "d1")
        await tracker.take("a", "d2")
        now[0] += 5
        await tracker.take("b", "d3")
        assert (await tracker.snapshot(["a", "b", "c"])).in_flight == {"a": 2, "b": 1, "c": 0}
        await tracker.release("a", "d1")
        await tracker.release("a", "nope")
        assert (await tracker.snapshot(["a"])).in_flight == {"a": 1}
        now[0] += 5  # d2 expires (taken at 100, ttl 10)
        assert (await tracker.snapshot(["a", "b"])).in_flight == {"a": 0, "b": 1}
        await tracker.set_down("b", True)
        assert (await tracker.snapshot(["a"])).down == {"b"}
        await tracker.set_down("b", False)
        assert (await tracker.snapshot(["a"])).down == frozenset()

    asyncio.run(run())


@pytest.mark.redis
def test_redis_tracker_is_shared_and_leases_expire(redis_url, redis_prefix):
    async def run():
        one = RedisLoadTracker(redis_url, redis_prefix, ttl_s=1.0)
        two = RedisLoadTracker(redis_url, redis_prefix, ttl_s=1.0)
        await one.take("a", "d1")
        await two.take("a", "d2")
        await two.set_down("b", True)
        snap = await one.snapshot(["a", "b"])
        assert snap.shared and snap.in_flight == {"a": 2, "b": 0} and snap.down == {"b"}
        await one.release("a", "d2")  # released by another replica than the one that took it
        assert (await two.snapshot(["a"])).in_flight == {"a": 1}
        await asyncio.sleep(1.3)
        assert (await two.snapshot(["a"])).in_flight == {"a": 0}
        await two.take("a", "d3")  # purges the expired member
        with redis.Redis.from_url(redis_url) as r:
            assert r.zcard(f"{redis_prefix}:inflight:a") == 1
            assert 0 < r.ttl(f"{redis_prefix}:inflight:a") <= 2
        await one.close()
        await two.close()

    asyncio.run(run())


def test_redis_tracker_falls_back_to_its_own_leases_when_redis_is_down():
    async def run():
        tracker = RedisLoadTracker("redis://127.0.0.1:1/0", "p", ttl_s=60)
        await tracker.take("a", "d1")  # does not raise
        snap = await tracker.snapshot(["a", "b"])
        assert not snap.shared and snap.in_flight == {"a": 1, "b": 0}
        await tracker.release("a", "d1")
        assert (await tracker.snapshot(["a"])).in_flight == {"a": 0}
        from experience import StoreUnavailable

        with pytest.raises(StoreUnavailable):
            await tracker.set_down("a", True)
        await tracker.close()

    asyncio.run(run())


# --- over HTTP: the live server (Redis, capacities recorded, admin token) -----------------


@pytest.fixture
def live(live_server):
    server, prefix = live_server
    with httpx.Client(base_url=server.url, timeout=60.0) as c:
        yield c, prefix


def agents_by_name(c: httpx.Client) -> dict[str, dict]:
    r = c.get("/v1/agents")
    assert r.status_code == 200, r.text
    return {a["name"]: a for a in r.json()}


def route(c: httpx.Client, **body) -> dict:
    r = c.post("/v1/route", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def feedback(c: httpx.Client, decision_id: str, quality: float = 0.5) -> None:
    r = c.post("/v1/feedback", json={"decision_id": decision_id, "quality": quality})
    assert r.status_code == 202, r.text


def decision_context(redis_url: str, prefix: str, decision_id: str) -> dict:
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        return json.loads(r.get(f"{prefix}:decision:{decision_id}"))


def expected_load(in_flight: dict[str, int]) -> list[float]:
    return normalised_load([in_flight.get(a, 0) for a in AGENTS], CAPACITIES, LOAD_CLIP).tolist()


@pytest.mark.redis
def test_agents_show_capacity_in_flight_load_and_down(live):
    c, _ = live
    agents = c.get("/v1/agents").json()
    assert [a["name"] for a in agents] == AGENTS
    assert [a["capacity"] for a in agents] == CAPACITIES
    for a in agents:
        assert set(a) >= {"in_flight", "load", "down"}
        assert a["load"] == expected_load({a["name"]: a["in_flight"]})[AGENTS.index(a["name"])]


@pytest.mark.redis
def test_load_rises_with_in_flight_requests_enters_the_obs_and_falls_on_feedback(live, redis_url):
    c, prefix = live
    prompt = f"Write a quicksort in Rust {uuid.uuid4().hex[:6]}"
    base = route(c, prompt=prompt)
    feedback(c, base["decision_id"])
    base_ctx = decision_context(redis_url, prefix, base["decision_id"])
    start = {name: a["in_flight"] for name, a in agents_by_name(c).items()}
    assert base_ctx["load"] == expected_load(start)

    # 4 requests in flight at code-expert (capacity 1): 3 beyond capacity, load 3.0
    held = [route(c, prompt=f"busy {i}", candidates=["code-expert"])["decision_id"] for i in range(4)]
    now = agents_by_name(c)
    assert now["code-expert"]["in_flight"] == start["code-expert"] + 4
    assert now["code-expert"]["load"] == expected_load({"code-expert": now["code-expert"]["in_flight"]})[0] >= 3.0
    assert all(now[a]["in_flight"] == start[a] for a in AGENTS if a != "code-expert")

    # the same prompt now sees that load in its observation, and the policy's output moves
    loaded = route(c, prompt=prompt)
    feedback(c, loaded["decision_id"])
    ctx = decision_context(redis_url, prefix, loaded["decision_id"])
    assert ctx["load"] == expected_load({**start, "code-expert": start["code-expert"] + 4})
    assert ctx["load"][0] >= 3.0
    diff = max(abs(loaded["probabilities"][a] - base["probabilities"][a]) for a in AGENTS)
    assert diff > 1e-4, (base["probabilities"], loaded["probabilities"])

    # feedback releases the leases: back to where it started, and to the same distribution
    for decision_id in held:
        feedback(c, decision_id)
    assert agents_by_name(c)["code-expert"]["in_flight"] == start["code-expert"]
    again = route(c, prompt=prompt)
    feedback(c, again["decision_id"])
    assert decision_context(redis_url, prefix, again["decision_id"])["load"] == base_ctx["load"]
    assert again["probabilities"] == pytest.approx(base["probabilities"], abs=1e-6)


@pytest.mark.redis
def test_a_lease_without_feedback_expires_after_the_ttl(live, redis_url):
    c, prefix = live
    before = agents_by_name(c)["math-solver"]["in_flight"]
    t0 = time.time()
    decision_id = route(c, prompt="What is 2 + 2?", candidates=["math-solver"])["decision_id"]
    key = f"{prefix}:inflight:math-solver"
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        expiry = r.zscore(key, decision_id)
        assert t0 + 600 - 1 <= expiry <= time.time() + 600 + 1  # ROUTER_INFLIGHT_TTL_S=600
        assert agents_by_name(c)["math-solver"]["in_flight"] == before + 1
        r.zadd(key, {decision_id: time.time() - 1})  # what 600 s do, without waiting for them
    assert agents_by_name(c)["math-solver"]["in_flight"] == before
    feedback(c, decision_id)  # feedback after expiry is still accepted and releases nothing more
    assert agents_by_name(c)["math-solver"]["in_flight"] == before


@pytest.mark.redis
def test_candidates_and_down_agents_mask_with_fallback_to_the_next_most_probable(live, redis_url):
    c, prefix = live
    prompt = f"Draft a limerick about queues {uuid.uuid4().hex[:6]}"
    free = route(c, prompt=prompt)
    feedback(c, free["decision_id"])
    ranked = sorted(AGENTS, key=lambda a: -free["probabilities"][a])
    first, second, third = ranked[:3]
    assert free["agent"] == first
    try:
        r = c.post(f"/admin/agents/{first}/down", headers=ADMIN)
        assert r.status_code == 200 and r.json() == {"name": first, "down": True}
        assert agents_by_name(c)[first]["down"] is True
        with redis.Redis.from_url(redis_url, decode_responses=True) as red:
            assert red.smembers(f"{prefix}:agents:down") == {first}

        fallback = route(c, prompt=prompt)
        feedback(c, fallback["decision_id"])
        assert fallback["agent"] == second
        probs = fallback["probabilities"]
        assert probs[first] == 0.0 and sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
        rest = 1.0 - free["probabilities"][first]
        for a in AGENTS:
            if a != first:
                assert probs[a] == pytest.approx(free["probabilities"][a] / rest, rel=1e-4)
        ctx = decision_context(redis_url, prefix, fallback["decision_id"])
        assert ctx["action_mask"] == [a != first for a in AGENTS]

        # candidates intersected with the agents up
        picked = route(c, prompt=prompt, candidates=[first, third])
        feedback(c, picked["decision_id"])
        assert picked["agent"] == third
        assert picked["probabilities"][first] == 0.0 and picked["probabilities"][third] == pytest.approx(1.0)

        r = c.post("/v1/route", json={"prompt": prompt, "candidates": [first]})
        assert r.status_code == 409, r.text
        assert r.json()["detail"] == (f"every candidate is marked down ({first!r}); agents up: "
                                      + ", ".join(a for a in AGENTS if a != first))
    finally:
        assert c.post(f"/admin/agents/{first}/up", headers=ADMIN).status_code == 200
    assert agents_by_name(c)[first]["down"] is False
    back = route(c, prompt=prompt)
    feedback(c, back["decision_id"])
    assert back["agent"] == first


@pytest.mark.redis
def test_every_agent_down_is_409(live):
    c, _ = live
    try:
        for a in AGENTS:
            assert c.post(f"/admin/agents/{a}/down", headers=ADMIN).status_code == 200
        r = c.post("/v1/route", json={"prompt": "anyone there?"})
        assert r.status_code == 409, r.text
        assert r.json()["detail"].startswith("every agent is marked down")
    finally:
        for a in AGENTS:
            assert c.post(f"/admin/agents/{a}/up", headers=ADMIN).status_code == 200
    body = route(c, prompt="anyone there?")
    feedback(c, body["decision_id"])


@pytest.mark.redis
def test_admin_agent_endpoints_need_the_token_and_a_known_agent(live):
    c, _ = live
    assert c.post("/admin/agents/translator/down").status_code == 401
    assert c.post("/admin/agents/translator/down",
                  headers={"Authorization": "Bearer wrong"}).status_code == 403
    r = c.post("/admin/agents/no-such-agent/down", headers=ADMIN)
    assert r.status_code == 404
    assert r.json()["detail"].startswith("unknown agent 'no-such-agent'; the agents are code-expert")
    assert c.post("/admin/agents/no-such-agent/up", headers=ADMIN).status_code == 404
    assert agents_by_name(c)["translator"]["down"] is False
    # up on an agent that is up is a no-op
    assert c.post("/admin/agents/translator/up", headers=ADMIN).json() == {"name": "translator", "down": False}
    schema = c.get("/openapi.json").json()
    assert "/admin/agents/{name}/down" in schema["paths"]


@pytest.mark.redis
def test_prompts_are_stored_only_when_asked(live, redis_url):
    c, prefix = live  # the live server runs with ROUTER_STORE_PROMPTS=true
    prompt = f"Keep this text {uuid.uuid4().hex[:6]}"
    body = route(c, prompt=prompt)
    feedback(c, body["decision_id"])
    ctx = decision_context(redis_url, prefix, body["decision_id"])
    assert ctx["prompt"] == prompt and ctx["embedding_dtype"] == "float16" and len(ctx["prompt_sha256"]) == 64
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        records = [json.loads(f["record"]) for _, f in r.xrange(f"{prefix}:experience", "-", "+")
                   if f["decision_id"] == body["decision_id"]]
    assert [rec["prompt"] for rec in records] == [prompt]


# --- over HTTP: the SQLite server tracks load in its process -------------------------------


def test_sqlite_server_tracks_in_flight_and_down_in_process(client):
    before = agents_by_name(client)["sql-writer"]["in_flight"]
    body = route(client, prompt="List tables", candidates=["sql-writer"])
    assert agents_by_name(client)["sql-writer"]["in_flight"] == before + 1
    feedback(client, body["decision_id"])
    assert agents_by_name(client)["sql-writer"]["in_flight"] == before
    try:  # this server opens its admin endpoints on loopback (ROUTER_ADMIN_OPEN=true)
        assert client.post("/admin/agents/sql-writer/down").status_code == 200
        assert agents_by_name(client)["sql-writer"]["down"] is True
        r = client.post("/v1/route", json={"prompt": "List tables", "candidates": ["sql-writer"]})
        assert r.status_code == 409 and "marked down" in r.json()["detail"]
    finally:
        assert client.post("/admin/agents/sql-writer/up").status_code == 200
    assert route(client, prompt="List tables", candidates=["sql-writer"])["agent"] == "sql-writer"
