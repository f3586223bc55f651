"""One checkpoint for every cost trade-off, as a user runs it: ``agent-router train -c
configs/tradeoffs.yaml`` fits the outcome actor on shipped prompts, ``agent-router calibrate``
finds a cost weight on it, and the real server routes each request at its own ``cost_weight``
over HTTP; retraining it from feedback and adding an agent are refused with a message."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import httpx
import numpy as np
import pytest

from tests.harness import ROOT

PROMPTS = ["What is the derivative of x^3 * sin(x)?", "Write a haiku about autumn rain.",
           "Translate 'good morning' into French.", "Which planet is the largest in the solar system?",
           "Write a Python function that reverses a linked list.", "Summarise the causes of World War I."]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, cwd=ROOT, timeout=900)


@pytest.fixture(scope="module")
def outcome_checkpoint(tmp_path_factory, embed_cache, shipped_paths):
    work = tmp_path_factory.mktemp("outcome")
    prompts, agents = shipped_paths
    out = _cli("train", "-c", "configs/tradeoffs.yaml", "--quiet", "-s", f"data.prompts={prompts}",
               "-s", f"data.agents={agents}", "-s", "data.limit=600", "-s", f"embed.cache_dir={embed_cache}",
               "-s", f"out_dir={work / 'run'}", "-s", f"checkpoint_dir={work / 'checkpoints'}", "-s", "device=cpu",
               "-s", "network.hidden=[64,64]")
    assert out.returncode == 0, out.stderr
    assert "eval:" in out.stdout and "metrics.jsonl" not in out.stdout
    return work


def test_one_checkpoint_serves_every_cost_weight(outcome_checkpoint, embed_cache):
    from policy.checkpoint import load_checkpoint
    from policy.outcome import OutcomeActor
    from training.config import checkpoint_config
    from training.data import load_splits
    from training.evaluation.offline import policy_choices

    policy = load_checkpoint(outcome_checkpoint / "checkpoints")
    assert isinstance(policy.actor, OutcomeActor) and policy.layout.cost_preference
    evaluation = json.loads((outcome_checkpoint / "run" / "eval.json").read_text())
    assert evaluation["val"]["policy"]["quality"] > evaluation["val"]["random"]["quality"] + 0.05
    # the critic's kNN member (network.outcome_neighbors, on by default) keeps the train split
    train_prompts = policy.actor.critic.neighbor_x.shape[0]
    assert policy.meta.network.outcome_neighbors and 0.6 * 600 < train_prompts < 0.8 * 600
    assert policy.actor.critic.neighbor_k.item() == evaluation["outcome_fit"]["neighbors"]
    splits = load_splits(checkpoint_config(policy.meta))
    val, emb = splits.splits["val"], splits.embeddings("val")

    def mean_cost(w: float) -> float:
        choice = policy_choices(policy, emb, val.prompt_tokens, cost_weight=w)
        return float(val.cost_usd[np.arange(len(val)), choice].mean())

    costs = [mean_cost(w) for w in [0.0, *np.geomspace(1.0, 1e6, 20).tolist()]]
    assert costs[-1] < 0.5 * costs[0]
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(costs)), costs
    target = 1000 * (costs[0] + costs[-1]) / 2
    out = _cli("calibrate", "--checkpoint", str(policy.path), "--target-cost-usd-per-1k", str(target), "--json")
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["cost_usd_per_1k"] <= target
    assert found["cost_usd_per_1k"] == pytest.approx(1000 * mean_cost(found["cost_weight"]))


def test_the_server_routes_each_request_at_its_cost_weight(outcome_checkpoint, start_server, embed_cache):
    import torch

    from contract.pricing import prompt_tokens
    from env.embedder import Embedder
    from policy.checkpoint import load_checkpoint

    policy = load_checkpoint(outcome_checkpoint / "checkpoints")
    embedder = Embedder(policy.embedding_model, cache_dir=embed_cache)
    db = outcome_checkpoint / "experience.sqlite3"
    server = start_server({"ROUTER_CHECKPOINT": str(outcome_checkpoint / "checkpoints"), "ROUTER_SQLITE_PATH": str(db),
                           "ROUTER_EMBED_CACHE_DIR": str(embed_cache), "ROUTER_ADMIN_TOKEN": "s3cret"}).wait_ready()
    with httpx.Client(base_url=server.url, timeout=60) as c:
        for prompt in PROMPTS:
            # the policy's own cost estimate of each agent for this prompt (USD)
            obs = policy.build_obs(torch.from_numpy(embedder.encode([prompt])), None,
                                   tokens=torch.tensor([prompt_tokens(prompt)]))
            cost = dict(zip(policy.agents, policy.actor.outcome(obs)[1].flatten().tolist(), strict=True))
            picked = []
            for weight in (0.0, 10.0, 1e3, 1e4, 1e6):
                body = c.post("/v1/route", json={"prompt": prompt, "cost_weight": weight}).json()
                assert body["cost_weight"] == weight
                picked.append(cost[body["agent"]])
            assert picked[-1] == pytest.approx(min(cost.values()))  # at 1e6 USD^-1 the cheapest is chosen
            assert all(b <= a * (1 + 1e-6) for a, b in itertools.pairwise(picked)), (prompt, picked)
        added = c.post("/admin/agents", json={"name": "poet", "price_per_1m_tokens": 0.3},
                       headers={"Authorization": "Bearer s3cret"})
        assert added.status_code == 409 and "no reward critic" in added.json()["detail"]
    out = _cli("retrain", "--checkpoint", str(outcome_checkpoint / "checkpoints"), "--sqlite-path", str(db))
    assert out.returncode != 0
    assert out.stderr.strip().startswith("error:") and "network.actor outcome" in out.stderr
    assert "Traceback" not in out.stderr
