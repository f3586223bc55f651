"""The agents server as a real uvicorn process, serving the calculator, through the official
``openai`` client: answers, streaming, usage, the model list, and OpenAI-style errors."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest

from tests.agents_harness import running_agents
from tests.harness import ROOT


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_agents(["calculator"], tmp_path_factory.mktemp("agents")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=30) as c:
        yield c


def test_answers_in_one_piece(client):
    reply = client.chat.completions.create(
        model="calculator", messages=[{"role": "user", "content": "What is 37 * 49 + 12?"}])
    assert reply.object == "chat.completion"
    assert reply.model == "calculator"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "37 * 49 + 12 = 1825"
    assert reply.choices[0].finish_reason == "stop"
    usage = reply.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (6, 5)  # ceil(chars / 4): contract.pricing
    assert usage.total_tokens == 11


def test_streams_chunks_then_usage(client):
    stream = client.chat.completions.create(
        model="calculator", messages=[{"role": "user", "content": "Compute (2/3 + 1/6) * 12"}], stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "(2/3 + 1/6) * 12 = 10"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == 6
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + 6
    assert all(c.usage is None for c in chunks[:-1])


def test_streams_without_usage_unless_asked(client):
    chunks = list(client.chat.completions.create(
        model="calculator", messages=[{"role": "user", "content": "17 % 5"}], stream=True))
    assert all(c.choices for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "17 % 5 = 2"


def test_non_arithmetic_gets_the_fixed_answer(client):
    from agents.calculator import NO_EXPRESSION_ANSWER

    reply = client.chat.completions.create(
        model="calculator", messages=[{"role": "user", "content": "Write a haiku about autumn"}])
    assert reply.choices[0].message.content == NO_EXPRESSION_ANSWER


def test_lists_its_models(client):
    models = client.models.list()
    assert [m.id for m in models.data] == ["calculator"]
    assert client.models.retrieve("calculator").id == "calculator"


def test_unknown_model_is_not_found(client):
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-17", messages=[{"role": "user", "content": "hi"}])
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


def test_bad_values_are_bad_requests(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="calculator", messages=[{"role": "user", "content": "1+1"}],
                                       max_tokens=0)
    assert info.value.param == "max_tokens"


@pytest.mark.parametrize(("body", "status"), [
    ("{", 400), ("[]", 400), ('{"model": "calculator"}', 400), ('{"model": "calculator", "messages": []}', 400),
    ('{"model": "calculator", "messages": [{"role": "robot", "content": "1+1"}]}', 400),
    ('{"model": "calculator", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}', 400),
    ('{"model": "calculator", "messages": [{"role": "user", "content": "1+1"}], "n": 3}', 400),
])
def test_bad_bodies_get_openai_errors_not_500(server, body, status):
    r = httpx.post(f"{server.url}/chat/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"


def test_unknown_path_is_an_openai_404(server):
    r = httpx.get(f"{server.url}/nothing")
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "invalid_request_error"


def test_cli_refuses_an_unknown_model_in_one_line():
    done = subprocess.run([sys.executable, "-m", "cli", "agents", "serve", "--model", "oracle"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == "error: unknown model 'oracle'; known: calculator, smollm2"
