"""The cold start as a user runs it, over real HTTP and Redis: ``agent-router init`` from an agents
file alone, the server explores from its first request, the client posts only the chosen agent's
quality, ``agent-router retrain --every-records`` learns from it, every replica hot-swaps, and the
new version routes each kind of prompt to the agent that is good at it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest

from policy.checkpoint import load_checkpoint
from tests.harness import ROOT

pytestmark = [pytest.mark.redis, pytest.mark.slow]
ADMIN_TOKEN = "cold-start-admin-token"
AGENTS = [
    {"name": "calculator", "description": "exact arithmetic", "cost_per_call_usd": 0.0},
    {"name": "writer", "description": "a general LLM", "price_per_1m_tokens": 0.2},
    {"name": "broken", "description": "answers nothing useful", "price_per_1m_tokens": 0.1},
]
TOPICS = ["the sea", "autumn", "a city at night", "friendship", "an old house", "the mountains", "a train",
          "winter", "a garden", "the moon", "rain", "a market", "a lighthouse", "the desert", "a river"]


def _prompts(rng: np.random.Generator, n: int) -> list[tuple[str, str]]:
    """``n`` prompts, half arithmetic and half writing, with their kind."""
    out = []
    for i in range(n):
        if i % 2:
            a, b, c = rng.integers(2, 99, size=3)
            out.append((f"What is {a} * {b} + {c}?", "math"))
        else:
            out.append((f"Write a short poem about {TOPICS[int(rng.integers(len(TOPICS)))]}.", "writing"))
    return out


def _quality(kind: str, agent: str, rng: np.random.Generator) -> float:
    """The world: the calculator is right on arithmetic and useless otherwise; the writer writes
    well and gets arithmetic right a fifth of the time; the broken agent never helps."""
    if agent == "broken":
        return 0.0
    if agent == "calculator":
        return 1.0 if kind == "math" else 0.0
    return 0.9 if kind == "writing" else float(rng.random() < 0.2)


def test_init_explore_feedback_retrain_learns_from_bandit_feedback(start_server, redis_url, redis_prefix,
                                                                   embed_cache, tmp_path):
    agents_file = tmp_path / "agents.json"
    agents_file.write_text(json.dumps({"agents": AGENTS}))
    root = tmp_path / "checkpoints"
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    init = subprocess.run([sys.executable, "-m", "cli", "init", "--agents", str(agents_file), "--out", str(root)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert init.returncode == 0, init.stderr
    v1 = load_checkpoint(root)
    assert v1.meta.exploration is not None and v1.meta.exploration.gamma == 0.0 and v1.reward_critic is not None

    server = start_server({
        "ROUTER_CHECKPOINT": str(root), "ROUTER_REDIS_URL": redis_url, "ROUTER_REDIS_PREFIX": redis_prefix,
        "ROUTER_EMBED_CACHE_DIR": str(embed_cache), "ROUTER_POLICY_POLL_S": "30", "ROUTER_ADMIN_TOKEN": ADMIN_TOKEN,
        # no cooldowns: the broken agent is the learner's to find, not the circuit breaker's (with them on, it
        # cools down as soon as it has 10 zero feedbacks, sometimes within the first 20 requests)
        "ROUTER_COOLDOWN_S": "0",
    }).wait_ready()
    rng = np.random.default_rng(0)
    with httpx.Client(base_url=server.url, timeout=30.0) as client:
        chosen = []
        for prompt, kind in _prompts(rng, 300):
            body = client.post("/v1/route", json={"prompt": prompt, "explore": True}).raise_for_status().json()
            if len(chosen) < 20:  # a cold start explores every agent uniformly
                assert body["propensity"] == pytest.approx(1 / 3, rel=1e-5), body
            chosen.append(body["agent"])
            r = client.post("/v1/feedback", json={"decision_id": body["decision_id"],
                                                  "quality": _quality(kind, body["agent"], rng)})
            assert r.status_code == 202, r.text
        assert set(chosen) == {a["name"] for a in AGENTS}

        run = subprocess.run([sys.executable, "-m", "cli", "retrain", "--checkpoint", str(root),
                              "--redis-url", redis_url, "--prefix", redis_prefix, "--every-records", "300",
                              "--every", "1s", "--rounds", "1", "--metrics-file", str(tmp_path / "rounds.jsonl"),
                              "--json"], capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
        assert run.returncode == 0, run.stderr
        result = json.loads(run.stdout.strip().splitlines()[-1])
        assert result["status"] == "published", result
        assert result["records"] == 300 and 0 < result["held_out"] < 300, result
        v2 = result["version"]
        deadline = time.monotonic() + 10
        while client.get("/admin/policy", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).json()["version"] != v2:
            assert time.monotonic() < deadline, "the server did not hot-swap to v2"
            time.sleep(0.1)

        right = {"math": 0, "writing": 0}
        held = _prompts(np.random.default_rng(1), 60)
        for prompt, kind in held:
            body = client.post("/v1/route", json={"prompt": prompt}).raise_for_status().json()
            assert body["policy_version"] == v2
            right[kind] += body["agent"] == ("calculator" if kind == "math" else "writer")
        explored = client.post("/v1/route", json={"prompt": "What is 12 * 12 + 1?", "explore": True}).json()
    v2_policy = load_checkpoint(root / v2)
    assert v2_policy.meta.exploration is not None and v2_policy.meta.exploration.gamma > 0
    assert right["math"] >= 27 and right["writing"] >= 27, right  # 90% of 30 each
    # exploration now spends little on a clearly worse agent
    assert explored["agent"] != "broken" or explored["propensity"] < 0.2
