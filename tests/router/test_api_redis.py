"""The HTTP API with the Redis experience store: against the real Redis, and with Redis down."""

from __future__ import annotations

import json
import uuid

import httpx
import pytest
import redis


@pytest.fixture
def rclient(redis_server):
    with httpx.Client(base_url=redis_server[0].url, timeout=30.0) as c:
        yield c


def experience(redis_url: str, prefix: str, decision_id: str) -> list[dict]:
    """Records of ``decision_id`` in the experience stream, read with XRANGE."""
    with redis.Redis.from_url(redis_url, decode_responses=True) as r:
        entries = r.xrange(f"{prefix}:experience", "-", "+")
    return [json.loads(f["record"]) for _, f in entries if f["decision_id"] == decision_id]


@pytest.mark.redis
def test_route_and_feedback_land_in_the_stream(rclient, redis_server, redis_url, check_record):
    _, prefix = redis_server
    prompt = f"Prove that the square root of 2 is irrational ({uuid.uuid4().hex[:6]})"
    r = rclient.post("/v1/route", json={"prompt": prompt, "session_id": "conv-9",
                                        "candidates": ["math-solver", "general-chat"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["agent"] in ("math-solver", "general-chat")
    with redis.Redis.from_url(redis_url, decode_responses=True) as red:
        ttl = red.ttl(f"{prefix}:decision:{body['decision_id']}")
        assert 0 < ttl <= 600
        decisions = red.xrange(f"{prefix}:decisions", "-", "+")
        assert body["decision_id"] in [f["decision_id"] for _, f in decisions]

    feedback = {"decision_id": body["decision_id"], "quality": 0.25, "cost_usd": 0.0,
                "latency_ms": 12}
    r = rclient.post("/v1/feedback", json=feedback)
    assert r.status_code == 202, r.text
    (record,) = experience(redis_url, prefix, body["decision_id"])
    check_record(record, body, prompt, feedback)
    assert record["session_id"] == "conv-9"

    # Duplicate feedback: 409 and still exactly one record.
    r = rclient.post("/v1/feedback", json={**feedback, "quality": 0.9})
    assert r.status_code == 409
    assert len(experience(redis_url, prefix, body["decision_id"])) == 1


@pytest.mark.redis
def test_server_timing_gives_the_client_each_stage_of_the_decision(rclient, redis_server):
    """With ``ROUTER_SERVER_TIMING=true`` a route answers with a W3C ``Server-Timing`` header whose
    stages are those of its access-log line."""
    server, _ = redis_server
    r = rclient.post("/v1/route", json={"prompt": f"time me {uuid.uuid4().hex}"})
    assert r.status_code == 200, r.text
    stages = {}
    for part in r.headers["server-timing"].split(","):
        name, _, duration = part.strip().partition(";dur=")
        stages[name] = float(duration)
    assert set(stages) == {"embed", "encode", "state", "policy", "store", "lease"}
    assert all(ms >= 0 for ms in stages.values()) and stages["encode"] > 0
    decision = r.json()["decision_id"]

    def this_route(lines: list[dict]) -> list[dict]:
        return [x for x in lines if x.get("decision_id") == decision and x["endpoint"] == "/v1/route"]

    (line,) = this_route(server.json_lines(until=this_route))  # its line is written after the response
    assert line["stages_ms"] == pytest.approx(stages, abs=1e-3)
    assert "server-timing" not in rclient.get("/healthz").headers  # only decisions have stages


@pytest.mark.redis
def test_unknown_and_expired_decisions_are_404(rclient, redis_server, redis_url):
    _, prefix = redis_server
    r = rclient.post("/v1/feedback", json={"decision_id": uuid.uuid4().hex, "quality": 0.5})
    assert r.status_code == 404
    body = rclient.post("/v1/route", json={"prompt": "hello there"}).json()
    with redis.Redis.from_url(redis_url) as red:  # what the TTL does, without waiting for it
        red.delete(f"{prefix}:decision:{body['decision_id']}")
    r = rclient.post("/v1/feedback", json={"decision_id": body["decision_id"], "quality": 0.5})
    assert r.status_code == 404
    assert experience(redis_url, prefix, body["decision_id"]) == []


def test_redis_down_routes_via_the_outbox_and_503s_what_it_cannot_check(redis_down_server):
    with httpx.Client(base_url=redis_down_server.url, timeout=30.0) as c:
        assert c.get("/healthz").status_code == 200
        # Route keeps answering: the decision goes to the durable outbox.
        r = c.post("/v1/route", json={"prompt": "anything"})
        assert r.status_code == 200, r.text
        decision_id = r.json()["decision_id"]
        # Its feedback is validated against the outbox and made durable there: 202, then 409.
        r = c.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.5})
        assert r.status_code == 202, r.text
        r = c.post("/v1/feedback", json={"decision_id": decision_id, "quality": 0.7})
        assert r.status_code == 409, r.text
        # A decision the outbox does not hold can only be checked by Redis: 503 + Retry-After.
        r = c.post("/v1/feedback", json={"decision_id": uuid.uuid4().hex, "quality": 0.5})
        assert r.status_code == 503
        assert r.headers["retry-after"] == "7"
        assert "retry later" in r.json()["detail"]
        # Input errors are still the client's: 422, not 503.
        assert c.post("/v1/route", json={"prompt": ""}).status_code == 422
    assert "Traceback" not in redis_down_server.log()
