"""Fixtures of the live-load and outbox tests (imported by ``conftest.py`` so that ``_prelaunch``
starts their servers together with the others).

- ``live_server``: a server on the real Redis with a checkpoint that records ``capacities``, an
  admin token, ``ROUTER_STORE_PROMPTS=true``.
- ``outage_server``: a server on a redis-server of its own (another port, ``appendonly yes``,
  ``appendfsync always``) that the test kills and restarts.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.conftest import delete_prefix
from tests.harness import free_port, make_checkpoint, stop_process

#: Capacities of the live checkpoint (requests per env step; None: unbounded), in AGENTS order.
CAPACITIES: list[int | None] = [1, 1, 2, 2, None, 3, 3, 4, 4]
LOAD_CLIP = 4.0  # the obs_layout load_clip make_checkpoint records
ADMIN_TOKEN = "live-admin-token"
REDIS_START_TIMEOUT_S = 30.0


def make_capacity_checkpoint(parent: Path) -> Path:
    """A fresh (almost uniform) 9-agent policy whose ``policy.json`` records ``CAPACITIES``."""
    return make_checkpoint(parent, CAPACITIES)


@pytest.fixture(scope="session")
def capacity_checkpoint(tmp_path_factory) -> Path:
    return make_capacity_checkpoint(tmp_path_factory.mktemp("capacity-checkpoints"))


@pytest.fixture(scope="session")
def live_server_launched(start_server, capacity_checkpoint, redis_url, tmp_path_factory) -> Iterator[tuple]:
    prefix = f"test-live-{uuid.uuid4().hex}"
    server = start_server({
        "ROUTER_CHECKPOINT": str(capacity_checkpoint),
        "ROUTER_REDIS_URL": redis_url,
        "ROUTER_REDIS_PREFIX": prefix,
        "ROUTER_OUTBOX_PATH": str(tmp_path_factory.mktemp("live-outbox") / "outbox.sqlite3"),
        "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
        "ROUTER_INFLIGHT_TTL_S": "600",
        "ROUTER_STORE_PROMPTS": "true",
        "ROUTER_LOG_FORMAT": "text",
    })
    yield server, prefix
    server.stop()
    delete_prefix(redis_url, prefix)


@pytest.fixture(scope="session")
def live_server(live_server_launched) -> tuple:
    """``(server, prefix)``: capacities ``CAPACITIES``, admin token ``ADMIN_TOKEN``, lease TTL 600 s,
    prompts stored, on the real Redis."""
    server, prefix = live_server_launched
    return server.wait_ready(), prefix


@dataclass
class OwnRedis:
    """A redis-server process of the test's own: ``appendonly yes``, ``appendfsync always``."""

    port: int
    directory: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, wait: bool = True) -> OwnRedis:
        binary = shutil.which("redis-server")
        assert binary is not None
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.directory), "--save", "",
             "--protected-mode", "no", "--daemonize", "no",
             "--logfile", str(self.directory / "redis.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        """Poll PING until it answers (the AOF is loaded).

        Raises:
            AssertionError: not ready in time, or the process exited.
        """
        deadline = time.monotonic() + REDIS_START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log()
            try:
                with redis.Redis(port=self.port, socket_connect_timeout=0.5, socket_timeout=1) as r:
                    if r.ping():
                        return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"redis-server on port {self.port} not ready:\n{self.log()}")

    def kill(self) -> None:
        """SIGKILL (no shutdown, no final save) and reap."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        stop_process(self.proc)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@pytest.fixture(scope="session")
def own_redis(tmp_path_factory) -> Iterator[OwnRedis]:
    """A redis-server of the test's own on a free port; skipped without the binary (fails with
    CI=true)."""
    if shutil.which("redis-server") is None:
        message = "redis-server is not installed"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    server = OwnRedis(free_port(), tmp_path_factory.mktemp("own-redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def outage_server_launched(start_server, checkpoint, own_redis, tmp_path_factory) -> tuple:
    prefix = f"test-outage-{uuid.uuid4().hex[:12]}"
    outbox = tmp_path_factory.mktemp("outage-outbox") / "outbox.sqlite3"
    server = start_server({
        "ROUTER_CHECKPOINT": str(checkpoint),
        "ROUTER_REDIS_URL": own_redis.url,
        "ROUTER_REDIS_PREFIX": prefix,
        "ROUTER_OUTBOX_PATH": str(outbox),
        "ROUTER_DECISION_TTL_S": "600",
        "ROUTER_RETRY_AFTER_S": "1",
        "ROUTER_LOG_FORMAT": "text",
    })
    return server, own_redis, prefix, outbox


@pytest.fixture(scope="session")
def outage_server(outage_server_launched) -> tuple:
    """``(server, own_redis, prefix, outbox_path)``."""
    server, own, prefix, outbox = outage_server_launched
    return server.wait_ready(), own, prefix, outbox
