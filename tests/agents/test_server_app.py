"""The agents app in process, with stand-in agents: when weights load, and how an agent's failure is answered."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from agents.base import Completion, GenerationParams, Message
from agents.server import create_app

BODY = {"model": "fake", "messages": [{"role": "user", "content": "hi"}]}


class FakeAgent:
    name = "fake"

    def __init__(self, fail_after: int | None = None) -> None:
        self.loads = 0
        self.fail_after = fail_after
        self.seen: list[tuple[list[Message], GenerationParams]] = []

    def load(self) -> None:
        self.loads += 1

    def complete(self, messages, params) -> Completion:
        self.seen.append((list(messages), params))
        if self.fail_after is not None:
            raise RuntimeError("the agent broke")
        return Completion("hello there", "stop", 1, 2)

    def stream(self, messages, params) -> Iterator[str | Completion]:
        for i, piece in enumerate(["hello ", "there"]):
            if self.fail_after is not None and i >= self.fail_after:
                raise RuntimeError("the agent broke")
            yield piece
        yield Completion("hello there", "stop", 1, 2)


@pytest.mark.parametrize("preload", [True, False])
def test_weights_load_at_startup_only_when_preloading(preload):
    agent = FakeAgent()
    with TestClient(create_app(agents={"fake": agent}, preload=preload)) as client:
        assert agent.loads == (1 if preload else 0)
        assert client.get("/healthz").json() == {"status": "ok", "models": ["fake"]}


def test_nothing_to_serve_is_refused():
    with pytest.raises(ValueError, match="no model"):
        create_app([])


def test_request_fields_reach_the_agent():
    agent = FakeAgent()
    with TestClient(create_app(agents={"fake": agent})) as client:
        body = BODY | {"messages": [{"role": "system", "content": None}, {"role": "user", "content": "hi"}],
                       "max_completion_tokens": 9999, "max_tokens": 3, "temperature": 0.5, "seed": 7,
                       "stop": ["\n"], "user": "someone"}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    messages, params = agent.seen[0]
    assert messages == [Message("system", ""), Message("user", "hi")]
    assert params == GenerationParams(max_tokens=512, temperature=0.5, top_p=None, seed=7)


def test_an_agent_failure_is_an_openai_500_without_a_traceback():
    with TestClient(create_app(agents={"fake": FakeAgent(fail_after=0)}), raise_server_exceptions=False) as client:
        r = client.post("/v1/chat/completions", json=BODY)
    assert r.status_code == 500
    assert r.json()["error"]["type"] == "server_error"
    assert "Traceback" not in r.text


def test_a_failure_mid_stream_ends_with_an_error_event():
    with TestClient(create_app(agents={"fake": FakeAgent(fail_after=1)})) as client:
        r = client.post("/v1/chat/completions", json=BODY | {"stream": True})
    events = [line.removeprefix("data: ") for line in r.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[1])["choices"][0]["delta"] == {"content": "hello "}
    assert json.loads(events[-1])["error"]["type"] == "server_error"
    assert "[DONE]" not in events
