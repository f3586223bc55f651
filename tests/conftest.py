"""Shared fixtures: the shipped dataset, a session-wide embedding cache, a small real config, Redis."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "llmrouter-dc"
UPSTREAM = ROOT.parent / "shared" / "data" / "llmrouter-dc"


@pytest.fixture(scope="session")
def shipped_paths() -> tuple[Path, Path]:
    return DATA / "prompts.jsonl.gz", DATA / "agents.json"


@pytest.fixture(scope="session")
def embed_cache(tmp_path_factory) -> Path:
    """One embedding cache for the whole session, so each prompt is embedded once."""
    return tmp_path_factory.mktemp("embeddings")


@pytest.fixture
def small_config(tmp_path, embed_cache, shipped_paths):
    """A training config on the first 600 shipped prompts, writing into tmp_path."""
    from training.config import load_config

    prompts, agents = shipped_paths
    return load_config(
        None,
        [
            f"data.prompts={prompts}",
            f"data.agents={agents}",
            "data.limit=600",
            f"embed.cache_dir={embed_cache}",
            f"out_dir={tmp_path / 'run'}",
            f"checkpoint_dir={tmp_path / 'checkpoints'}",
            "device=cpu",
            "env.num_worlds=64",
            "network.hidden=[64,64]",
            "ppo.total_steps=480",
            "ppo.rollout_len=16",
            "ppo.lr=0.001",
            "ppo.gamma=0.0",
        ],
    )


@pytest.fixture
def weak_policy(small_config):
    """``(config, version_dir)`` of a policy that has learnt next to nothing (one PPO iteration at
    lr 1e-6 on ``small_config``): near uniform, its argmax an arbitrary agent per prompt, so logged
    feedback can improve on it."""
    from training.run import run_training

    ppo = small_config.ppo.model_copy(update={"total_steps": 16, "lr": 1e-6})
    cfg = small_config.model_copy(update={"ppo": ppo})
    return cfg, run_training(cfg, progress=False)


def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key ``<prefix>:*``."""
    with redis.Redis.from_url(url) as r:
        keys = list(r.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            r.delete(*keys)


@pytest.fixture(scope="session")
def redis_url() -> str:
    """URL of the real Redis (``REDIS_URL`` or localhost); skip when absent, fail when CI=true."""
    url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    try:
        with redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=2) as r:
            r.ping()
    except redis.RedisError as exc:
        message = f"Redis at {url} is unreachable: {exc}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return url


@pytest.fixture
def redis_prefix(redis_url) -> Iterator[str]:
    """A unique key prefix whose keys are deleted afterwards."""
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    delete_prefix(redis_url, prefix)
