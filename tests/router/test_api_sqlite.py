"""The HTTP API over a real uvicorn process with the default SQLite experience store."""

from __future__ import annotations

import asyncio
import re
import uuid

import pytest

from experience import SqliteExperienceStore
from tests.harness import AGENTS, agent_specs


def read_all(server) -> list[tuple[str, dict]]:
    """Every experience record in the server's SQLite file, via the store API."""

    async def read() -> list[tuple[str, dict]]:
        store = await asyncio.to_thread(SqliteExperienceStore, server.sqlite_path)
        try:
            return await store.read_experience(count=100_000)
        finally:
            await store.close()

    return asyncio.run(read())


def route(client, **body) -> dict:
    r = client.post("/v1/route", json=body)
    assert r.status_code == 200, r.text
    return r.json()


def test_route_then_feedback_is_logged(client, sqlite_server, check_record):
    prompt = f"Write a Python function that merges two sorted lists {uuid.uuid4().hex[:8]}"
    body = route(client, prompt=prompt, session_id="s-1")
    assert re.fullmatch(r"[0-9a-f]{32}", body["decision_id"])
    assert body["agent"] in AGENTS
    assert list(body["probabilities"]) == AGENTS
    assert sum(body["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert body["probabilities"][body["agent"]] == max(body["probabilities"].values())

    feedback = {"decision_id": body["decision_id"], "quality": 0.8, "cost_usd": 0.002,
                "latency_ms": 850.5}
    r = client.post("/v1/feedback", json=feedback)
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "accepted", "decision_id": body["decision_id"]}

    records = [rec for _, rec in read_all(sqlite_server) if rec["decision_id"] == body["decision_id"]]
    assert len(records) == 1
    check_record(records[0], body, prompt, feedback)
    assert records[0]["session_id"] == "s-1" and records[0]["explore"] is False
    assert records[0]["action_mask"] == [True] * len(AGENTS)


def test_feedback_optional_fields_default_to_null(client, sqlite_server, check_record):
    prompt = "Translate 'good morning' into French"
    body = route(client, prompt=prompt)
    feedback = {"decision_id": body["decision_id"], "quality": 0}
    assert client.post("/v1/feedback", json=feedback).status_code == 202
    (record,) = [rec for _, rec in read_all(sqlite_server) if rec["decision_id"] == body["decision_id"]]
    check_record(record, body, prompt, feedback)
    assert record["session_id"] is None


def test_duplicate_feedback_is_409_and_logged_once(client, sqlite_server):
    body = route(client, prompt="What is 17 * 23?")
    feedback = {"decision_id": body["decision_id"], "quality": 1.0}
    assert client.post("/v1/feedback", json=feedback).status_code == 202
    r = client.post("/v1/feedback", json={**feedback, "quality": 0.1})
    assert r.status_code == 409
    assert body["decision_id"] in r.json()["detail"]
    records = [rec for _, rec in read_all(sqlite_server) if rec["decision_id"] == body["decision_id"]]
    assert len(records) == 1 and records[0]["quality"] == 1.0


def test_unknown_decision_is_404(client):
    unknown = uuid.uuid4().hex
    r = client.post("/v1/feedback", json={"decision_id": unknown, "quality": 0.5})
    assert r.status_code == 404
    assert unknown in r.json()["detail"]


def test_candidates_mask_the_choice(client, sqlite_server):
    allowed = ["sql-writer", "translator"]
    for explore in (False, True):
        body = route(client, prompt="Find the top customers by revenue", candidates=allowed,
                     explore=explore)
        assert body["agent"] in allowed
        probs = body["probabilities"]
        assert all(probs[a] == 0.0 for a in AGENTS if a not in allowed)
        assert all(probs[a] > 0.0 for a in allowed)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)
    assert client.post("/v1/feedback", json={"decision_id": body["decision_id"],
                                              "quality": 0.5}).status_code == 202
    (record,) = [rec for _, rec in read_all(sqlite_server) if rec["decision_id"] == body["decision_id"]]
    assert record["action_mask"] == [a in allowed for a in AGENTS]
    assert record["explore"] is True
    # the propensity is the chosen agent's probability under the policy mixed with uniform over the
    # 2 allowed agents (ROUTER_EXPLORE_FLOOR 0.02: alpha 0.04), as the response says
    pi = record["probabilities"][record["action"]]
    assert record["propensity"] == body["propensity"] == pytest.approx(0.96 * pi + 0.04 / 2, rel=1e-6)


def test_greedy_is_deterministic_and_explore_samples(client):
    prompt = "Summarise this paragraph about photosynthesis."
    greedy = {route(client, prompt=prompt)["agent"] for _ in range(3)}
    assert len(greedy) == 1
    # The fresh policy is almost uniform over 9 agents: 40 samples hit one agent with p ~ 1e-37.
    sampled = {route(client, prompt=prompt, explore=True)["agent"] for _ in range(40)}
    assert len(sampled) > 1


def test_prompt_limit_is_the_runtime_setting(client):
    assert client.post("/v1/route", json={"prompt": "x" * 100}).status_code == 200
    r = client.post("/v1/route", json={"prompt": "x" * 101})
    assert r.status_code == 422
    assert r.json()["detail"] == "prompt has 101 characters; the limit is 100"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"prompt": " \n\t "}, "prompt: must not be empty"),
        ({}, "prompt: Field required"),
        ({"prompt": 123}, "prompt: Input should be a valid string"),
        ({"prompt": "hi", "explore": "yes"}, "explore: Input should be a valid boolean"),
        ({"prompt": "hi", "candidates": "translator"}, "candidates: Input should be a valid list"),
        ({"prompt": "hi", "candidates": [1]}, "candidates.0: Input should be a valid string"),
        ({"prompt": "hi", "session_id": 7}, "session_id: Input should be a valid string"),
        ({"prompt": "hi", "agent": "x"}, "agent: Extra inputs are not permitted"),
        ({"prompt": "hi", "candidates": []}, "candidates: must name at least one agent"),
        ({"prompt": "hi", "candidates": ["translator", "translator"]},
         "candidates: lists 'translator' more than once"),
        ({"prompt": "hi", "candidates": ["translator", "nope", "also-nope"]},
         "unknown candidates 'nope', 'also-nope'"),
    ],
)
def test_bad_route_requests_are_422(client, body, needle):
    r = client.post("/v1/route", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"decision_id": "d", "quality": 1.5}, "quality: Input should be less than or equal to 1"),
        ({"decision_id": "d", "quality": -0.1},
         "quality: Input should be greater than or equal to 0"),
        ({"decision_id": "d", "quality": "0.5"}, "quality: Input should be a valid number"),
        ({"decision_id": "d", "quality": True}, "quality: Input should be a valid number"),
        ({"decision_id": "d"}, "quality: Field required"),
        ({"quality": 0.5}, "decision_id: Field required"),
        ({"decision_id": "d", "quality": 0.5, "cost_usd": -1},
         "cost_usd: Input should be greater than or equal to 0"),
        ({"decision_id": "d", "quality": 0.5, "latency_ms": "fast"},
         "latency_ms: Input should be a valid number"),
        ({"decision_id": 5, "quality": 0.5}, "decision_id: Input should be a valid string"),
    ],
)
def test_bad_feedback_requests_are_422(client, body, needle):
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]
    assert isinstance(r.json()["errors"], list)


@pytest.mark.parametrize("path", ["/v1/route", "/v1/feedback"])
@pytest.mark.parametrize(
    "content", [b'{"prompt": "hi",', b"not json", b'{"quality": NaN', b'{"prompt": "\xff"}']
)
def test_malformed_json_is_400(client, path, content):
    r = client.post(path, content=content, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["detail"].startswith("malformed JSON body: ")


def test_lone_surrogate_prompt_is_422(client):
    r = client.post("/v1/route", content=b'{"prompt": "a\\ud800b"}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert "prompt: is not valid Unicode" in r.json()["detail"]


def test_nan_quality_is_422(client):
    r = client.post("/v1/feedback", content=b'{"decision_id": "d", "quality": NaN}',
                    headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert "quality: Input should be a finite number" in r.json()["detail"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"prompt"', b""])
def test_body_that_is_not_an_object_is_422(client, body):
    r = client.post("/v1/route", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422
    assert r.json()["detail"].startswith("request body: ")


def test_agents_and_health(client, sqlite_server):
    r = client.get("/v1/agents")
    assert r.status_code == 200
    # the dataset's agent records, but the capacity the policy's load uses: this checkpoint
    # records none (every agent unbounded), whatever its agent specs say
    specs = [{**spec, "capacity": None} for spec in agent_specs()]
    assert [{k: a[k] for k in spec} for a, spec in zip(r.json(), specs, strict=True)] == specs
    for agent in r.json():  # live state (tests/router/test_live_load.py); unbounded: load 0
        assert agent["in_flight"] >= 0 and agent["load"] == 0.0 and agent["down"] is False
    health = client.get("/healthz").json()
    assert health["status"] == "ok"
    assert health["policy_version"] == route(client, prompt="hello")["policy_version"]


def test_openapi_documents_the_fields(client):
    schema = client.get("/openapi.json").json()["components"]["schemas"]
    assert "description" in schema["RouteRequest"]["properties"]["candidates"]
    assert schema["FeedbackRequest"]["additionalProperties"] is False
