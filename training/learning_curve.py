"""Figures written by training: the reward curve."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_reward_curve(history: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """Write a PNG of mean step reward, mean quality and validation reward against agent steps.

    Args:
        history: per-iteration metrics with ``agent_steps``, ``reward`` and ``quality``, and
            ``val_reward`` on the iterations that were validated.
        path: output file (``.png``).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    x = [h["agent_steps"] for h in history]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.plot(x, [h["reward"] for h in history], label="mean reward per step")
    ax.plot(x, [h["quality"] for h in history], label="mean quality", alpha=0.7)
    val = [(h["agent_steps"], h["val_reward"]) for h in history if "val_reward" in h]
    if val:
        ax.plot(*zip(*val, strict=True), marker="o", ms=3, label="validation reward (greedy)")
    ax.set_xlabel("agent steps")
    ax.set_ylabel("per-request value")
    ax.set_title(title or "MAPPO training on PromptEnv")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
