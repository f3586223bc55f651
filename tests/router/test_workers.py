"""Several uvicorn workers behind one port: live load, agents down and hot swap stay one state, shared
through Redis; without Redis, more than one worker is refused at start-up."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid

import httpx
import pytest

from tests.conftest import delete_prefix
from tests.harness import AGENTS, ROOT, Server, make_checkpoint

TOKEN = "workers-admin-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def two_workers(redis_url, tmp_path, capacity_checkpoint):
    prefix = f"test-workers-{uuid.uuid4().hex}"
    root = tmp_path / "checkpoints"
    shutil.copytree(capacity_checkpoint, root / capacity_checkpoint.name)
    server = Server(env={"ROUTER_CHECKPOINT": str(root), "ROUTER_REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": prefix,
                         "ROUTER_WORKERS": "2", "ROUTER_ADMIN_TOKEN": TOKEN, "ROUTER_INFLIGHT_TTL_S": "600",
                         "ROUTER_OUTBOX_PATH": str(tmp_path / "outbox.sqlite3"), "ROUTER_LOG_LEVEL": "info",
                         "ROUTER_POLICY_POLL_S": "0.5"},
                    log_path=tmp_path / "server.log", uvicorn_args=["--workers", "2"]).start()
    try:
        server.wait_ready()
        deadline = time.monotonic() + 240
        while server.log().count("Application startup complete") < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield server, root
    finally:
        server.stop()
        delete_prefix(redis_url, prefix)


@pytest.mark.redis
@pytest.mark.slow
def test_two_workers_share_live_load_agents_down_and_the_served_version(two_workers, tmp_path):
    server, root = two_workers
    log = server.log()
    assert log.count("Started server process") >= 2 and log.count("Application startup complete") == 2
    # a fresh connection per request: the kernel spreads them over both workers
    def agents() -> dict:
        return {a["name"]: a for a in httpx.get(f"{server.url}/v1/agents", timeout=30).json()}

    held = []
    for i in range(8):
        r = httpx.post(f"{server.url}/v1/route", json={"prompt": f"busy {i}", "candidates": [AGENTS[0]]}, timeout=30)
        held.append(r.json()["decision_id"])
    for _ in range(10):  # every worker sees all 8 leases, whichever took them
        assert agents()[AGENTS[0]]["in_flight"] == 8
    down = httpx.post(f"{server.url}/admin/agents/{AGENTS[1]}/down", headers=ADMIN, timeout=30)
    assert down.status_code == 200
    for _ in range(10):
        assert agents()[AGENTS[1]]["down"] is True
    for decision_id in held:
        httpx.post(f"{server.url}/v1/feedback", json={"decision_id": decision_id, "quality": 1.0},
                   timeout=30).raise_for_status()
    for _ in range(10):
        assert agents()[AGENTS[0]]["in_flight"] == 0

    new = make_checkpoint(root)  # a second version; one worker is told, both follow through Redis
    reload = httpx.post(f"{server.url}/admin/policy/reload", json={"checkpoint": new.name}, headers=ADMIN,
                        timeout=120)
    assert reload.status_code == 200, reload.text
    deadline = time.monotonic() + 30
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = {httpx.get(f"{server.url}/healthz", timeout=30).json()["policy_version"] for _ in range(12)}
        if seen == {reload.json()["version"]}:
            break
        time.sleep(0.3)
    assert seen == {reload.json()["version"]}


def test_more_than_one_worker_without_redis_is_refused_in_one_line(tmp_path, checkpoint):
    run = subprocess.run([sys.executable, "-m", "cli", "serve", "--workers", "2", "--checkpoint", str(checkpoint)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and "needs redis_url" in run.stderr and "Traceback" not in run.stderr
