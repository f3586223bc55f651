"""Shared fixtures: the shipped dataset, a session-wide embedding cache, a small real config."""

from __future__ import annotations

from pathlib import Path

import pytest

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
