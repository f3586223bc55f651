"""GET /metrics (Prometheus), structured request logs without prompt text, and the body size limit."""

from __future__ import annotations

import asyncio
import json
import uuid
from types import SimpleNamespace

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from router.app import create_app
from router.metrics import route_template
from router.settings import Settings
from tests.harness import AGENTS


def scrape(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of one scrape."""
    r = client.get("/metrics")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_move_with_routes_and_feedback(client):
    before = scrape(client)
    chosen = []
    for i in range(3):
        r = client.post("/v1/route", json={"prompt": f"metrics prompt {i} {uuid.uuid4().hex[:6]}"})
        assert r.status_code == 200, r.text
        chosen.append(r.json())
    r = client.post("/v1/feedback", json={"decision_id": chosen[0]["decision_id"], "quality": 1.0})
    assert r.status_code == 202, r.text
    assert client.post("/v1/route", json={"prompt": ""}).status_code == 422
    assert client.get(f"/no/such/path/{uuid.uuid4().hex}").status_code == 404
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    route_ok = {"method": "POST", "endpoint": "/v1/route", "status": "200"}
    assert delta("router_http_requests_total", **route_ok) == 3
    assert delta("router_http_request_duration_seconds_count", **route_ok) == 3
    assert delta("router_http_request_duration_seconds_sum", **route_ok) > 0
    assert delta("router_http_requests_total", method="POST", endpoint="/v1/feedback", status="202") == 1
    assert delta("router_http_requests_total", method="POST", endpoint="/v1/route", status="422") == 1
    # a path of no route is one label value, not one per path
    assert delta("router_http_requests_total", method="GET", endpoint="unmatched", status="404") == 1
    assert not any("no/such" in str(labels) for _, labels in after)

    per_agent = {a: delta("router_decisions_total", agent=a) for a in AGENTS}
    assert sum(per_agent.values()) == 3
    for body in chosen:
        assert per_agent[body["agent"]] >= 1

    version = client.get("/healthz").json()["policy_version"]
    assert value(after, "router_policy_info", version=version) == 1
    assert ("router_outbox_depth", ()) in after
    assert delta("router_embed_batch_size_sum") == 3  # three distinct prompts encoded
    assert delta("router_embed_cache_lookups_total", result="miss") == 3


def test_repeated_prompt_hits_the_cache(client):
    prompt = f"cache me {uuid.uuid4().hex}"
    before = scrape(client)
    for _ in range(3):
        assert client.post("/v1/route", json={"prompt": prompt}).status_code == 200
    after = scrape(client)
    assert value(after, "router_embed_cache_lookups_total", result="hit") - value(
        before, "router_embed_cache_lookups_total", result="hit") == 2
    assert value(after, "router_embed_batch_size_sum") - value(before, "router_embed_batch_size_sum") == 1


def test_concurrent_routes_are_embedded_in_batches(start_server, checkpoint, tmp_path):
    """One encode thread and passes of up to 32: a prompt that arrives while it is busy waits and shares
    the next pass (with a thread free for each arrival, a fast machine could encode every prompt of the
    burst alone; with ``ROUTER_ENCODE_BATCH=auto`` a CPU whose cheapest size per prompt is 1 would)."""
    n = 32
    server = start_server({"ROUTER_CHECKPOINT": str(checkpoint.parent), "ROUTER_ENCODE_THREADS": "1",
                           "ROUTER_ENCODE_BATCH": "32",
                           "ROUTER_SQLITE_PATH": str(tmp_path / "experience.sqlite3")}).wait_ready()
    client = httpx.Client(base_url=server.url, timeout=30.0)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60.0,
                                     limits=httpx.Limits(max_connections=n, max_keepalive_connections=n)) as ac:
            # open the n connections first, so the burst's requests arrive together rather than one
            # connection set-up apart (on a quiet machine each prompt was otherwise encoded alone)
            await asyncio.gather(*(ac.get("/healthz") for _ in range(n)))
            rs = await asyncio.gather(*(ac.post("/v1/route", json={"prompt": f"burst {i} {uuid.uuid4().hex[:8]}"})
                                        for i in range(n)))
        return [r.status_code for r in rs]

    before = scrape(client)
    assert asyncio.run(burst()) == [200] * n
    after = scrape(client)
    prompts = value(after, "router_embed_batch_size_sum") - value(before, "router_embed_batch_size_sum")
    calls = value(after, "router_embed_batch_size_count") - value(before, "router_embed_batch_size_count")
    client.close()
    assert prompts == n
    assert calls < n  # some prompts shared an encode call


def test_request_logs_carry_the_decision_id_and_never_the_prompt(client, sqlite_server):
    secret = f"my confidential prompt {uuid.uuid4().hex}"

    def refused(lines: list[dict]) -> int:
        return sum(x.get("status") == 422 for x in lines)

    refused_before = refused(sqlite_server.json_lines())
    body = client.post("/v1/route", json={"prompt": secret}).json()
    assert client.post("/v1/feedback", json={"decision_id": body["decision_id"], "quality": 0.5}).status_code == 202
    assert client.post("/v1/route", json={"prompt": secret, "candidates": ["nobody"]}).status_code == 422
    assert client.post("/v1/route", json={"prompt": secret * 10}).status_code == 422  # over the 100-char limit
    # each line is written after its response: wait for the last two (the refusals)
    lines = sqlite_server.json_lines(until=lambda lines: refused(lines) >= refused_before + 2)
    logs = sqlite_server.log() + sqlite_server.stdout()
    assert secret not in logs and secret[-32:] not in logs
    route_lines = [x for x in lines if x.get("decision_id") == body["decision_id"]]
    assert {x["endpoint"] for x in route_lines} == {"/v1/route", "/v1/feedback"}
    route_line = next(x for x in route_lines if x["endpoint"] == "/v1/route")
    assert route_line["agent"] == body["agent"]
    assert route_line["policy_version"] == body["policy_version"]
    assert route_line["status"] == 200 and route_line["latency_ms"] > 0
    assert route_line["logger"] == "router.access" and route_line["level"] == "info"


def test_request_logs_say_where_a_route_spent_its_time_and_no_header_tells_a_client(client, sqlite_server):
    prompt = f"where does the time go {uuid.uuid4().hex}"
    first, again = (client.post("/v1/route", json={"prompt": prompt}) for _ in range(2))
    assert first.status_code == again.status_code == 200
    assert "server-timing" not in first.headers  # ROUTER_SERVER_TIMING is off by default
    ids = {first.json()["decision_id"], again.json()["decision_id"]}

    def routes(lines: list[dict]) -> dict[str, dict]:
        return {x["decision_id"]: x for x in lines if x.get("endpoint") == "/v1/route" and x.get("decision_id") in ids}

    by_id = routes(sqlite_server.json_lines(until=lambda lines: len(routes(lines)) == 2))  # written after each response
    encoded, cached = by_id[first.json()["decision_id"]], by_id[again.json()["decision_id"]]
    assert set(encoded["stages_ms"]) == {"embed", "encode", "state", "policy", "store", "lease"}
    assert 0 < encoded["stages_ms"]["encode"] <= encoded["stages_ms"]["embed"]
    assert sum(encoded["stages_ms"].values()) - encoded["stages_ms"]["encode"] <= encoded["latency_ms"]
    assert "encode" not in cached["stages_ms"]  # the LRU cache answered: nothing was encoded
    assert cached["stages_ms"]["embed"] < encoded["stages_ms"]["embed"]


# --- body size limit -------------------------------------------------------------------------


def test_body_over_the_limit_gets_413(client):
    limit = Settings.model_fields["max_body_bytes"].default
    big = json.dumps({"prompt": "x" * (limit + 10)})
    r = client.post("/v1/route", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_streamed_body_over_the_limit_gets_413(client):
    limit = Settings.model_fields["max_body_bytes"].default

    def chunks():  # no Content-Length: chunked transfer encoding
        yield b'{"prompt": "'
        for _ in range(limit // 65536 + 2):
            yield b"y" * 65536
        yield b'"}'

    r = client.post("/v1/route", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "too large" in r.json()["detail"]


def test_longest_prompt_fits_under_the_default_limit(client):
    """A 32,000-character prompt (the default limit) of astral characters, JSON-escaped as
    ``\\ud83d\\ude00`` (12 bytes each), is not refused for size; this server's 100-char limit
    refuses it with 422 instead."""
    body = json.dumps({"prompt": "\U0001f600" * Settings.model_fields["max_prompt_chars"].default})
    assert len(body) < Settings.model_fields["max_body_bytes"].default
    r = client.post("/v1/route", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text


# --- in process ------------------------------------------------------------------------------


def test_each_app_has_its_own_registry():
    a, b = create_app(Settings()), create_app(Settings())
    assert a.state.metrics.registry is not b.state.metrics.registry
    a.state.metrics.decisions.labels(agent="x").inc()
    assert b.state.metrics.registry.get_sample_value("router_decisions_total", {"agent": "x"}) is None


def test_state_is_read_at_scrape_time():
    app = create_app(Settings())
    metrics = app.state.metrics

    class Store:
        async def outbox_depth(self) -> int:
            return 7

    registry = SimpleNamespace(current=SimpleNamespace(version="v1"))
    app.state.context = SimpleNamespace(registry=registry, store=Store(), redis_errors={}, batcher=None)
    asyncio.run(metrics.refresh(app))
    reg = metrics.registry
    assert reg.get_sample_value("router_policy_info", {"version": "v1"}) == 1
    assert reg.get_sample_value("router_outbox_depth") == 7
    registry.current = SimpleNamespace(version="v2")  # a hot swap
    assert reg.get_sample_value("router_policy_info", {"version": "v2"}) == 1
    assert reg.get_sample_value("router_policy_info", {"version": "v1"}) is None


def test_route_template_before_routing():
    app = create_app(Settings())
    assert route_template(app, {"type": "http", "path": "/v1/route", "method": "POST"}) == "/v1/route"
    assert route_template(app, {"type": "http", "path": "/v1/nope", "method": "POST"}) == "unmatched"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_log_formatters_write_only_known_fields(fmt):
    import logging

    from router.logging import JsonFormatter, KeyValueFormatter

    record = logging.LogRecord("router.access", logging.INFO, __file__, 1, "request", None, None)
    record.decision_id, record.endpoint, record.prompt = "abc", "/v1/route", "SECRET PROMPT"
    line = (JsonFormatter() if fmt == "json" else KeyValueFormatter()).format(record)
    assert "abc" in line and "/v1/route" in line and "SECRET" not in line
    if fmt == "json":
        assert json.loads(line)["decision_id"] == "abc"
