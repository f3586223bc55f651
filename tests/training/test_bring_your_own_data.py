"""A dataset of the user's own: 10 agents priced per call (USD), 100 prompts of 8 kinds, written in
the dataset format (tests/data/byod), trained and evaluated end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "byod"

pytestmark = pytest.mark.slow


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=600)


def test_own_dataset_trains_and_evaluates(tmp_path, embed_cache):
    agents = json.loads((DATA / "agents.json").read_text())["agents"]
    assert len(agents) >= 10 and all(a["cost_per_call_usd"] is not None for a in agents)
    sets = [f"data.prompts={DATA / 'prompts.jsonl'}", f"data.agents={DATA / 'agents.json'}",
            f"embed.cache_dir={embed_cache}", f"out_dir={tmp_path / 'run'}", f"checkpoint_dir={tmp_path / 'ck'}",
            "device=cpu", "env.num_worlds=64", "env.cost_weight=20", "network.hidden=[64,64]",
            "ppo.total_steps=480", "ppo.lr=0.003", "ppo.gamma=0.0", "eval_every=10", "tensorboard=false"]
    train = _cli("train", "--quiet", *[arg for s in sets for arg in ("-s", s)])
    assert train.returncode == 0, train.stderr
    eval_ = _cli("eval", "--checkpoint", str(tmp_path / "ck"), "--split", "val", "--json")
    assert eval_.returncode == 0, eval_.stderr
    report = json.loads(eval_.stdout.strip().splitlines()[-1])
    assert report["agents"] == [a["name"] for a in agents]
    routers = report["routers"]
    assert {"policy", "knn", "mlp", "random", "best_single", "oracle"} <= set(routers)
    # per-call prices: the cheapest agent's cost per 1k requests is its price x 1000
    cheapest = min(agents, key=lambda a: a["cost_per_call_usd"])
    assert routers["cheapest"]["cost_usd_per_1k"] == pytest.approx(cheapest["cost_per_call_usd"] * 1000, rel=1e-5)
    assert routers["policy"]["reward"] > routers["random"]["reward"]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "val_reward" in metrics[-1]
