"""Fixtures of the router tests: a real checkpoint, real uvicorn servers, the real Redis."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import delete_prefix
from tests.harness import AGENTS, Server, make_checkpoint


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> Path:
    """A version directory of a valid checkpoint."""
    return make_checkpoint(tmp_path_factory.mktemp("checkpoints"))


@pytest.fixture(scope="session")
def start_server(tmp_path_factory) -> Iterator:
    """``start_server(env) -> Server`` (launched, not waited for); all are stopped at the end."""
    servers: list[Server] = []

    def start(env: dict[str, str]) -> Server:
        log = tmp_path_factory.mktemp("server") / "stderr.log"
        server = Server(env=env, log_path=log).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


# Every server the collected tests need is launched at once by ``_prelaunch`` (their start-up,
# mostly importing torch and loading the model, then overlaps); ``<name>`` fixtures wait for them.


@pytest.fixture(scope="session", autouse=True)
def _prelaunch(request) -> None:
    """Launch, before the first test, the servers that any collected test uses."""
    needed = set().union(*(item.fixturenames for item in request.session.items))
    for name in ("sqlite_server", "redis_server", "redis_down_server", "failed_starts", "live_server",
                 "outage_server", "proxy_sqlite_server", "proxy_redis_server"):
        if name in needed:
            # No Redis: the skip (or, with CI=true, the failure) is cached by pytest and
            # raised again in the tests that need Redis, not here.
            with contextlib.suppress(pytest.skip.Exception, pytest.fail.Exception):
                request.getfixturevalue(f"{name}_launched")


@pytest.fixture(scope="session")
def sqlite_server_launched(start_server, checkpoint, tmp_path_factory) -> Server:
    db = tmp_path_factory.mktemp("experience") / "experience.sqlite3"
    server = start_server(
        {
            "ROUTER_CHECKPOINT": str(checkpoint.parent),
            "ROUTER_SQLITE_PATH": str(db),
            "ROUTER_MAX_PROMPT_CHARS": "100",
            "ROUTER_ADMIN_OPEN": "true",
        }
    )
    server.sqlite_path = db
    return server


@pytest.fixture(scope="session")
def sqlite_server(sqlite_server_launched) -> Server:
    """A server with the default SQLite experience store, a 100-character prompt limit, and its admin
    endpoints opened without a token (``ROUTER_ADMIN_OPEN=true`` on loopback)."""
    return sqlite_server_launched.wait_ready()


@pytest.fixture(scope="session")
def redis_server_launched(start_server, checkpoint, redis_url, tmp_path_factory) -> Iterator[tuple[Server, str]]:
    prefix = f"test-{uuid.uuid4().hex}"
    server = start_server(
        {
            "ROUTER_CHECKPOINT": str(checkpoint),
            "ROUTER_REDIS_URL": redis_url,
            "ROUTER_REDIS_PREFIX": prefix,
            "ROUTER_DECISION_TTL_S": "600",
            "ROUTER_STREAM_MAXLEN": "1000",
            "ROUTER_OUTBOX_PATH": str(tmp_path_factory.mktemp("outbox") / "outbox.sqlite3"),
            "ROUTER_SERVER_TIMING": "true",
        }
    )
    yield server, prefix
    server.stop()
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def redis_server(redis_server_launched) -> tuple[Server, str]:
    """``(server, prefix)``: a server logging to the real Redis under a unique key prefix, no admin
    token (its admin endpoints are closed), with ``Server-Timing`` headers (``ROUTER_SERVER_TIMING``)."""
    server, prefix = redis_server_launched
    return server.wait_ready(), prefix


@pytest.fixture(scope="session")
def redis_down_server_launched(start_server, checkpoint, tmp_path_factory) -> Server:
    return start_server(
        {
            "ROUTER_CHECKPOINT": str(checkpoint),
            "ROUTER_REDIS_URL": "redis://127.0.0.1:1/0",
            "ROUTER_RETRY_AFTER_S": "7",
            "ROUTER_OUTBOX_PATH": str(tmp_path_factory.mktemp("outbox-down") / "outbox.sqlite3"),
        }
    )


@pytest.fixture(scope="session")
def redis_down_server(redis_down_server_launched) -> Server:
    """A server whose Redis URL points at a port nothing listens on."""
    return redis_down_server_launched.wait_ready()


def _expected_checkpoint_error(path: Path) -> str:
    from policy.checkpoint import CheckpointError, load_checkpoint

    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    return str(info.value)


@pytest.fixture(scope="session")
def failed_starts_launched(start_server, checkpoint, tmp_path_factory) -> dict:
    from policy.checkpoint import WEIGHTS

    root = tmp_path_factory.mktemp("broken")
    missing = root / "nowhere"
    corrupt = root / "corrupt" / checkpoint.name
    shutil.copytree(checkpoint, corrupt)
    data = bytearray((corrupt / WEIGHTS).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (corrupt / WEIGHTS).write_bytes(bytes(data))
    return {
        "missing": (
            start_server({"ROUTER_CHECKPOINT": str(missing)}),
            _expected_checkpoint_error(missing),
        ),
        "corrupt": (
            start_server({"ROUTER_CHECKPOINT": str(corrupt)}),
            _expected_checkpoint_error(corrupt),
        ),
        "settings": (
            start_server({"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_MAX_PROMPT_CHARS": "0"}),
            "invalid settings: ROUTER_MAX_PROMPT_CHARS: Input should be greater than or equal to 1",
        ),
    }


@pytest.fixture(scope="session")
def failed_starts(failed_starts_launched) -> dict[str, tuple[int, str, str, str]]:
    """``case -> (exit code, stderr, stdout, expected message)`` of servers that cannot start:
    a missing checkpoint, a corrupt one (a flipped byte in the weights), an invalid setting."""
    return {
        name: (server.wait_exit(), server.log(), server.stdout(), message)
        for name, (server, message) in failed_starts_launched.items()
    }


@pytest.fixture
def client(sqlite_server) -> Iterator[httpx.Client]:
    """An HTTP client of :func:`sqlite_server`."""
    with httpx.Client(base_url=sqlite_server.url, timeout=30.0) as c:
        yield c


def _check_record(record: dict, route: dict, prompt: str, feedback: dict) -> None:
    """Assert that an experience record matches the route answer and the feedback sent."""
    from datetime import datetime

    from contract.experience import decode_embedding

    assert record["decision_id"] == route["decision_id"]
    assert record["policy_version"] == route["policy_version"]
    assert record["agent"] == route["agent"] == AGENTS[record["action"]]
    assert record["probabilities"] == pytest.approx([route["probabilities"][a] for a in AGENTS])
    assert abs(record["log_prob"] - math.log(record["probabilities"][record["action"]])) < 1e-5
    assert record["propensity"] == route["propensity"]
    if not record["explore"]:
        assert record["propensity"] == 1.0
    assert record["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert prompt not in json.dumps(record) and "prompt" not in record
    assert record["embedding_dtype"] == "float16"
    vec = decode_embedding(record["embedding"])
    assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-2
    assert record["load"] == [0.0] * len(AGENTS)
    assert len(record["action_mask"]) == len(AGENTS)
    assert all(isinstance(m, bool) for m in record["action_mask"])
    for key in ("created_at", "feedback_at"):
        assert datetime.fromisoformat(record[key]).utcoffset().total_seconds() == 0
    for key in ("quality", "cost_usd", "latency_ms"):
        assert record[key] == feedback.get(key)


@pytest.fixture
def check_record():
    """``check_record(record, route_json, prompt, feedback_json)``: assert they all agree."""
    return _check_record


# Fixtures of the live-load and outbox tests; imported here so that ``_prelaunch`` can start them.
from tests.router.live_fixtures import (  # noqa: E402, F401
    capacity_checkpoint,
    live_server,
    live_server_launched,
    outage_server,
    outage_server_launched,
    own_redis,
)
from tests.router.proxy_fixtures import (  # noqa: E402, F401
    fake_upstream,
    proxy_redis_server,
    proxy_redis_server_launched,
    proxy_sqlite_server,
    proxy_sqlite_server_launched,
)
