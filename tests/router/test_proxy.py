"""The OpenAI-compatible proxy, driven with the official ``openai`` client against the real server, whose
upstreams are a real HTTP server on loopback that fails, stalls and breaks streams on command."""

from __future__ import annotations

import json
import sqlite3
import time

import httpx
import openai
import pytest
import redis

from tests.harness import AGENTS, agent_specs
from tests.router.proxy_fixtures import CLIENT_KEY, POOR_KEY, PREFERENCE_PROXIED, PROXIED, UPSTREAM_SECRET

PROMPT = "Please summarise the plot of Hamlet in two sentences."


def client(server, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=30)


def sqlite_records(server) -> list[dict]:
    with sqlite3.connect(server.sqlite_path) as conn:
        return [json.loads(r) for (r,) in conn.execute("SELECT record FROM experience ORDER BY seq")]


def records_of(server, decision_ids: list[str]) -> list[dict]:
    deadline = time.monotonic() + 10
    while True:  # a call record is written when the call ends, which can be just after the answer
        found = [r for r in sqlite_records(server) if r["decision_id"] in decision_ids]
        if len(found) >= len(decision_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def proxy_records(server, last_decision_id: str) -> list[dict]:
    """The proxy's call records, once the one of ``last_decision_id`` is written (just after its answer)."""
    deadline = time.monotonic() + 10
    while True:
        records = [r for r in sqlite_records(server) if r.get("source") == "proxy"]
        if any(r["decision_id"] == last_decision_id for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.05)


def price_of(agent: str) -> float:
    return next(s["price_per_1m_tokens"] for s in agent_specs() if s["name"] == agent)


def first_choice(server, prompt: str) -> tuple[str, str]:
    """``(agent, decision id)`` of the router's first choice for ``prompt`` (with every agent up)."""
    raw = client(server).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": prompt}])
    return raw.headers["x-router-agent"], raw.headers["x-router-decision-id"]


@pytest.fixture
def upstream(fake_upstream):
    fake_upstream.reset()
    yield fake_upstream
    fake_upstream.reset()


def test_models_list_the_router_and_each_proxied_agent(proxy_sqlite_server):
    ids = [m.id for m in client(proxy_sqlite_server).models.list()]
    assert ids[0] == "router"
    assert sorted(ids[1:]) == sorted(PROXIED)


def test_a_routed_answer_is_the_upstreams_and_its_call_record_is_written_without_feedback(proxy_sqlite_server,
                                                                                          upstream):
    raw = client(proxy_sqlite_server).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPT}],
        user="session-7")
    answer = raw.parse()
    agent = raw.headers["x-router-agent"]
    assert agent in PROXIED and answer.model == agent
    assert answer.choices[0].message.content == f"echo: {PROMPT}"
    assert raw.headers["x-router-attempts"] == "1" and raw.headers["x-router-policy-version"]
    stages = [part.strip().partition(";dur=")[0] for part in raw.headers["server-timing"].split(",")]
    # ROUTER_SERVER_TIMING=true; no encode stage when an earlier test sent the same prompt (the LRU cache)
    assert [s for s in stages if s != "encode"] == ["embed", "state", "policy", "store", "lease"]
    decision_id = raw.headers["x-router-decision-id"]
    (record,) = records_of(proxy_sqlite_server, [decision_id])
    assert record["source"] == "proxy" and record["outcome"] == "ok" and record["upstream_status"] == 200
    assert record.get("quality") is None and record["session_id"] == "session-7"
    assert record["usage_prompt_tokens"] == answer.usage.prompt_tokens
    assert record["usage_completion_tokens"] == answer.usage.completion_tokens
    assert record["latency_ms"] > 0
    assert record["cost_usd"] == pytest.approx(price_of(agent) * answer.usage.total_tokens / 1e6)
    # quality can still come later, by decision id; the retrain job trains on that one only
    # the X-Session-Id header names the conversation too (and wins over `user`)
    other = client(proxy_sqlite_server).chat.completions.with_raw_response.create(
        model="router", messages=[{"role": "user", "content": PROMPT}], user="session-7",
        extra_headers={"X-Session-Id": "conversation-42"})
    (by_header,) = records_of(proxy_sqlite_server, [other.headers["x-router-decision-id"]])
    assert by_header["session_id"] == "conversation-42"
    fb = httpx.post(f"{proxy_sqlite_server.url}/v1/feedback", json={"decision_id": decision_id, "quality": 0.8})
    assert fb.status_code == 202, fb.text
    again = httpx.post(f"{proxy_sqlite_server.url}/v1/feedback", json={"decision_id": decision_id, "quality": 0.8})
    assert again.status_code == 409
    both = [r for r in sqlite_records(proxy_sqlite_server) if r["decision_id"] == decision_id]
    assert [r.get("source", "client") for r in both] == ["proxy", "client"] and both[1]["quality"] == 0.8

    from policy.checkpoint import load_checkpoint
    from training.retrain.trajectories import NO_QUALITY, build_batch

    policy = load_checkpoint(proxy_sqlite_server.env["ROUTER_CHECKPOINT"])
    batch = build_batch([(str(i), r) for i, r in enumerate(both)], policy, cost_weight=0.0)
    assert len(batch.entry_ids) == 1 and batch.skipped == {NO_QUALITY: 1}


def test_a_streamed_answer_relays_the_chunks_and_records_time_to_first_token(proxy_sqlite_server, upstream):
    stream = client(proxy_sqlite_server).chat.completions.create(
        model="router", messages=[{"role": "user", "content": PROMPT}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == f"echo: {PROMPT}"
    models = {c.model for c in chunks}
    assert len(models) == 1 and models <= set(PROXIED)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    time.sleep(0.5)  # the record is written after [DONE]
    last = [r for r in sqlite_records(proxy_sqlite_server) if r.get("source") == "proxy"][-1]
    assert last["agent"] in models and last["outcome"] == "ok" and last["ttft_ms"] > 0
    assert last["usage_completion_tokens"] == chunks[-1].usage.completion_tokens


def test_without_include_usage_the_stream_has_no_usage_chunk(proxy_sqlite_server, upstream):
    chunks = list(client(proxy_sqlite_server).chat.completions.create(
        model=AGENTS[4], messages=[{"role": "user", "content": "hi there"}], stream=True))
    assert all(c.usage is None for c in chunks) and all(c.choices for c in chunks)
    assert {c.model for c in chunks} == {AGENTS[4]}


def test_an_agents_name_bypasses_the_router(proxy_sqlite_server, upstream):
    for agent in PROXIED:
        raw = client(proxy_sqlite_server).chat.completions.with_raw_response.create(
            model=agent, messages=[{"role": "user", "content": PROMPT}])
        assert raw.headers["x-router-agent"] == agent and raw.parse().model == agent


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("mode", ["fail-500", "fail-503", "fail-429", "stall", "drop"])
def test_a_failing_agent_falls_back_to_the_next_and_both_attempts_are_logged(proxy_sqlite_server, upstream, mode,
                                                                             stream):
    prompt = f"fallback check {mode} {stream}"
    chosen, probe = first_choice(proxy_sqlite_server, prompt)
    upstream.mode(PROXIED[chosen], mode)
    api = client(proxy_sqlite_server).chat.completions
    if stream:
        with api.with_streaming_response.create(model="router", messages=[{"role": "user", "content": prompt}],
                                                stream=True) as raw:
            headers = raw.headers
            text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    else:
        raw = api.with_raw_response.create(model="router", messages=[{"role": "user", "content": prompt}])
        headers, text = raw.headers, raw.parse().choices[0].message.content
    assert text == f"echo: {prompt}"
    assert headers["x-router-attempts"] == "2" and headers["x-router-agent"] != chosen
    # records are written when their answer went out: match them by decision and agent, not by order
    records = [r for r in proxy_records(proxy_sqlite_server, headers["x-router-decision-id"])
               if r["decision_id"] != probe]
    (answered,) = [r for r in records if r["decision_id"] == headers["x-router-decision-id"]]
    failed = [r for r in records if r["agent"] == chosen][-1]
    assert failed["agent"] == chosen and failed["quality"] == 0.0
    assert failed["outcome"] == ("timeout" if mode == "stall" else "error")
    if mode.startswith("fail-"):
        assert failed["upstream_status"] == int(mode.split("-")[1])
    assert answered["decision_id"] == headers["x-router-decision-id"] and answered["outcome"] == "ok"
    assert failed["action_mask"][AGENTS.index(chosen)] and not answered["action_mask"][AGENTS.index(chosen)]
    assert 0 < answered["propensity"] <= 1


def test_a_stream_that_breaks_midway_ends_with_an_error_event(proxy_sqlite_server, upstream):
    agent = AGENTS[2]
    upstream.mode(PROXIED[agent], "break")
    stream = client(proxy_sqlite_server).chat.completions.create(
        model=agent, messages=[{"role": "user", "content": PROMPT}], stream=True)
    with pytest.raises(openai.APIError, match="broke the stream"):
        for _ in stream:
            pass
    decision_id = stream.response.headers["x-router-decision-id"]  # its record follows the error event
    (last,) = [r for r in proxy_records(proxy_sqlite_server, decision_id) if r["decision_id"] == decision_id]
    assert last["agent"] == agent and last["outcome"] == "error"


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_when_every_attempt_fails_the_client_gets_502_or_504(proxy_sqlite_server, upstream, stream):
    for model in PROXIED.values():
        upstream.mode(model, "fail-500")
    with pytest.raises(openai.InternalServerError) as info:
        client(proxy_sqlite_server).chat.completions.create(
            model="router", messages=[{"role": "user", "content": PROMPT}], stream=stream)
    assert info.value.status_code == 502
    assert info.value.body["type"] == "upstream_error" and "2 attempts" in info.value.body["message"]
    for model in PROXIED.values():
        upstream.mode(model, "stall")
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as info:
        client(proxy_sqlite_server).chat.completions.create(
            model="router", messages=[{"role": "user", "content": PROMPT}], stream=stream)
    assert info.value.status_code == 504 and time.monotonic() - started < 6 + 3


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_client_that_goes_away_cancels_the_upstream_call(proxy_sqlite_server, upstream, stream):
    agent = AGENTS[1]
    model = PROXIED[agent]
    upstream.mode(model, "slow" if stream else "stall")
    before = upstream.stats().get(model, {}).get("cancelled", 0)
    body = {"model": agent, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    if stream:
        with httpx.stream("POST", f"{proxy_sqlite_server.url}/v1/chat/completions", json=body, timeout=10) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")
    else:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{proxy_sqlite_server.url}/v1/chat/completions", json=body, timeout=0.8)
    deadline = time.monotonic() + 10
    while upstream.stats()[model]["cancelled"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.stats()[model]["cancelled"] == before + 1
    while time.monotonic() < deadline:
        last = [r for r in sqlite_records(proxy_sqlite_server) if r.get("source") == "proxy"][-1]
        if last["outcome"] == "cancelled":
            break
        time.sleep(0.05)
    assert last["agent"] == agent and last["outcome"] == "cancelled" and last.get("quality") is None


@pytest.mark.parametrize(("body", "status", "param"), [
    ({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}, 404, "model"),
    ({"model": "router-cw-abc", "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "router-cw-0.5", "messages": [{"role": "user", "content": "x"}]}, 400, "model"),
    ({"model": "router", "messages": [{"role": "system", "content": "x"}]}, 400, "messages"),
    ({"model": "router", "messages": []}, 400, "messages"),
    ({"model": "router"}, 400, "messages"),
])
def test_bad_requests_get_openai_style_errors(proxy_sqlite_server, body, status, param):
    response = httpx.post(f"{proxy_sqlite_server.url}/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"] and error["type"] == "invalid_request_error" and error["param"] == param


def test_client_keys_are_required_checked_and_budgeted(proxy_redis_server, fake_upstream, redis_url):
    server, prefix = proxy_redis_server
    fake_upstream.reset()
    messages = [{"role": "user", "content": PROMPT}]
    with pytest.raises(openai.AuthenticationError):
        client(server, "wrong-key").chat.completions.create(model="router", messages=messages)
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "router", "messages": messages})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{server.url}/v1/models").status_code == 401
    # the model name carries the cost preference: the router's default (0), then 500 USD^-1
    assert [m.id for m in client(server, CLIENT_KEY).models.list()] == ["router", "router-cw-0", *PREFERENCE_PROXIED]
    answer = client(server, CLIENT_KEY).chat.completions.create(model="router", messages=messages)
    assert answer.model == AGENTS[0]
    thrifty = client(server, CLIENT_KEY).chat.completions.create(model="router-cw-500", messages=messages)
    assert thrifty.model == AGENTS[1]
    # the upstream got its own key, from the environment variable the upstreams file names
    import hashlib

    assert fake_upstream.stats()[PREFERENCE_PROXIED[answer.model]]["auth"] == hashlib.sha256(
        f"Bearer {UPSTREAM_SECRET}".encode()).hexdigest()
    client(server, POOR_KEY).chat.completions.create(model="router-cw-500", messages=messages)  # over its budget
    with pytest.raises(openai.RateLimitError, match="budget"):
        client(server, POOR_KEY).chat.completions.create(model="router-cw-500", messages=messages)
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'router_proxy_calls_total{{agent="{answer.model}",key="team-a",outcome="ok"}} 1.0' in metrics
    assert 'router_proxy_cost_usd_total{key="poor"}' in metrics
    assert 'router_proxy_tokens_total{key="team-a",kind="completion"}' in metrics
    # the call records are in the Redis experience stream, and no secret is in the server's log
    deadline = time.monotonic() + 10
    while True:
        with redis.Redis.from_url(redis_url) as r:
            records = [json.loads(f[b"record"]) for _, f in r.xrange(f"{prefix}:experience")]
        proxied = [x for x in records if x.get("source") == "proxy"]
        if len(proxied) >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(proxied) == 3 and all(x["outcome"] == "ok" and x["usage_completion_tokens"] > 0 for x in proxied)
    assert sorted(x["cost_weight"] for x in proxied) == [0.0, 500.0, 500.0]
    assert all(x["latency_ms"] > 0 for x in proxied) and all(x["cost_usd"] > 0 for x in proxied
                                                            if x["agent"] == AGENTS[1])
    log = server.log() + server.stdout()
    assert UPSTREAM_SECRET not in log and CLIENT_KEY not in log and POOR_KEY not in log


def test_a_server_without_upstreams_proxies_nothing(sqlite_server):
    response = httpx.post(f"{sqlite_server.url}/v1/chat/completions",
                          json={"model": "router", "messages": [{"role": "user", "content": "x"}]})
    assert response.status_code == 404 and response.json()["error"]["code"] == "proxy_not_configured"
