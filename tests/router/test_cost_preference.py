"""``cost_weight`` on ``POST /v1/route``: a policy of every trade-off routes by the request's
preference and logs it; bad values and policies trained at one cost weight get a 422."""

from __future__ import annotations

import json
import sqlite3

import httpx
import pytest

from tests.harness import AGENTS, preference_checkpoint


@pytest.fixture(scope="module")
def preference_server(start_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("preference")
    version = preference_checkpoint(root / "checkpoints")
    db = root / "experience.sqlite3"
    server = start_server({"ROUTER_CHECKPOINT": str(version), "ROUTER_SQLITE_PATH": str(db)}).wait_ready()
    server.sqlite_path = db
    return server


def test_the_request_preference_chooses_the_agent_and_is_logged(preference_server):
    with httpx.Client(base_url=preference_server.url, timeout=30) as c:
        default = c.post("/v1/route", json={"prompt": "summarise the contract"}).json()
        assert default["agent"] == AGENTS[0] and default["cost_weight"] == 0.0
        cheap = c.post("/v1/route", json={"prompt": "summarise the contract", "cost_weight": 500}).json()
        assert cheap["agent"] == AGENTS[1] and cheap["cost_weight"] == 500.0
        assert c.post("/v1/feedback", json={"decision_id": cheap["decision_id"], "quality": 0.5}).status_code == 202
    conn = sqlite3.connect(preference_server.sqlite_path)
    (record,) = conn.execute("SELECT record FROM experience WHERE decision_id = ?", (cheap["decision_id"],)).fetchone()
    conn.close()
    assert json.loads(record)["cost_weight"] == 500.0


@pytest.mark.parametrize(("body", "words"), [
    ('{"prompt": "x", "cost_weight": -1}', "greater than or equal to 0"),
    ('{"prompt": "x", "cost_weight": NaN}', "finite"),
    ('{"prompt": "x", "cost_weight": Infinity}', "finite"),
    ('{"prompt": "x", "cost_weight": "5"}', "valid number"),
    ('{"prompt": "x", "cost_weight": 1e12}', "less than or equal to"),
])
def test_bad_cost_weights_are_422(preference_server, body, words):
    r = httpx.post(f"{preference_server.url}/v1/route", content=body, headers={"content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 422, r.text
    assert "cost_weight" in r.json()["detail"] and words in r.json()["detail"]


def test_a_policy_of_one_cost_weight_refuses_a_preference(client):
    r = client.post("/v1/route", json={"prompt": "hi", "cost_weight": 10})
    assert r.status_code == 422 and "trained at one cost weight" in r.json()["detail"]
    ok = client.post("/v1/route", json={"prompt": "hi"}).json()
    assert ok["cost_weight"] is None
