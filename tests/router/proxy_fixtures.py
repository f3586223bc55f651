"""Fixtures of the proxy tests (imported by ``conftest.py`` so that ``_prelaunch`` starts their servers
with the others): a fake upstream process (:mod:`tests.router.fake_upstream`) and two proxying servers.

- ``proxy_sqlite_server``: SQLite store, the proxy opened on loopback (``ROUTER_PROXY_OPEN``), cooldowns
  off, short upstream timeouts, ``Server-Timing`` headers (``ROUTER_SERVER_TIMING``).
- ``proxy_redis_server``: the real Redis, a policy of every trade-off (``preference_checkpoint``:
  ``AGENTS[0]`` at cost weight 0, ``AGENTS[1]`` from about 0.2 up), client keys (one with a tiny
  daily budget), and an upstream API key read from an environment variable.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import delete_prefix
from tests.harness import AGENTS, LoopbackProcess, Server, free_port, preference_checkpoint

#: agents of the test checkpoint that the proxy serves, and their fake upstream model names
PROXIED = {AGENTS[1]: "m1", AGENTS[2]: "m2", AGENTS[4]: "m4"}
#: the agents the Redis server proxies: the two its preference policy chooses between
PREFERENCE_PROXIED = {AGENTS[0]: "m0", AGENTS[1]: "m1"}
CLIENT_KEY = "ar-test-client-key"
POOR_KEY = "ar-test-poor-key"
UPSTREAM_SECRET = "sk-upstream-secret-value"


@dataclass
class FakeUpstream(LoopbackProcess):
    """:mod:`tests.router.fake_upstream` as a process on a free loopback port."""

    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    what = "fake upstream"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "tests.router.fake_upstream", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def mode(self, model: str, mode: str) -> None:
        httpx.post(f"{self.url}/control", json={"model": model, "mode": mode}, timeout=5).raise_for_status()

    def stats(self) -> dict:
        return httpx.get(f"{self.url}/stats", timeout=5).json()

    def reset(self) -> None:
        for model in {**PROXIED, **PREFERENCE_PROXIED}.values():
            self.mode(model, "ok")


@pytest.fixture(scope="session")
def fake_upstream(tmp_path_factory) -> Iterator[FakeUpstream]:
    upstream = FakeUpstream(tmp_path_factory.mktemp("fake-upstream") / "upstream.log").start()
    try:
        yield upstream.wait_ready(timeout_s=60)
    finally:
        upstream.stop()


def _upstreams_file(directory: Path, url: str, key_env: str | None = None, proxied: dict | None = None) -> Path:
    path = directory / "upstreams.json"
    agents = {name: {"base_url": f"{url}/v1", "model": model, **({"api_key_env": key_env} if key_env else {})}
              for name, model in (proxied or PROXIED).items()}
    path.write_text(json.dumps({"agents": agents}))
    return path


@pytest.fixture(scope="session")
def proxy_sqlite_server_launched(start_server, checkpoint, fake_upstream, tmp_path_factory) -> Server:
    work = tmp_path_factory.mktemp("proxy-sqlite")
    server = start_server({
        "ROUTER_CHECKPOINT": str(checkpoint),
        "ROUTER_SQLITE_PATH": str(work / "experience.sqlite3"),
        "ROUTER_UPSTREAMS_FILE": str(_upstreams_file(work, fake_upstream.url)),
        "ROUTER_PROXY_OPEN": "true",
        "ROUTER_COOLDOWN_S": "0",
        "ROUTER_UPSTREAM_FIRST_TOKEN_TIMEOUT_S": "1.5",
        "ROUTER_UPSTREAM_TIMEOUT_S": "6",
        "ROUTER_SERVER_TIMING": "true",
    })
    server.sqlite_path = work / "experience.sqlite3"
    return server


@pytest.fixture(scope="session")
def proxy_sqlite_server(proxy_sqlite_server_launched) -> Server:
    return proxy_sqlite_server_launched.wait_ready()


@pytest.fixture(scope="session")
def proxy_redis_server_launched(start_server, fake_upstream, redis_url,
                                tmp_path_factory) -> Iterator[tuple[Server, str]]:
    from router.proxy.keys import hash_key

    work = tmp_path_factory.mktemp("proxy-redis")
    checkpoint = preference_checkpoint(work / "checkpoints")
    prefix = f"test-proxy-{uuid.uuid4().hex}"
    keys = [{"name": "team-a", "sha256": hash_key(CLIENT_KEY)},
            {"name": "poor", "sha256": hash_key(POOR_KEY), "budget_usd_per_day": 1e-9}]
    server = start_server({
        "ROUTER_CHECKPOINT": str(checkpoint),
        "ROUTER_REDIS_URL": redis_url,
        "ROUTER_REDIS_PREFIX": prefix,
        "ROUTER_OUTBOX_PATH": str(work / "outbox.sqlite3"),
        "ROUTER_UPSTREAMS_FILE": str(_upstreams_file(work, fake_upstream.url, key_env="FAKE_UPSTREAM_KEY",
                                                     proxied=PREFERENCE_PROXIED)),
        "FAKE_UPSTREAM_KEY": UPSTREAM_SECRET,
        "ROUTER_API_KEYS": json.dumps(keys),
        "ROUTER_COOLDOWN_S": "0",
        "ROUTER_LOG_LEVEL": "debug",
    })
    yield server, prefix
    server.stop()
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def proxy_redis_server(proxy_redis_server_launched) -> tuple[Server, str]:
    server, prefix = proxy_redis_server_launched
    return server.wait_ready(), prefix
