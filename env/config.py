"""Configuration of :class:`env.prompt_env.PromptEnv`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class EnvConfig(BaseModel):
    """Parameters of the routing game (:class:`env.prompt_env.PromptEnv`).

    Attributes:
        num_worlds: ``B``, parallel worlds stepped together.
        num_routers: ``N``, routers per world, each with its own prompt each step.
        episode_len: ``T``, steps before truncation (which bootstraps).
        cost_weight: reward per USD of call cost (reward = quality - cost_weight * cost_usd - ...).
        congestion_weight: reward per unit of congestion ``f(load)`` (see ``PromptEnv``).
        reward_sharing: ``team`` gives every router the mean reward of its world; ``individual``
            gives each router its own.
        include_agent_id: append a one-hot router id ``[N]`` to each router's obs.
        load_clip: normalised load values are clipped to ``[0, load_clip]`` in obs and penalty.
        agent_down_prob: probability that an agent is down (masked) for a world's whole episode;
            at least one agent always stays up.
    """

    model_config = ConfigDict(extra="forbid")

    num_worlds: int = Field(default=64, ge=1)
    num_routers: int = Field(default=1, ge=1)
    episode_len: int = Field(default=16, ge=1)
    cost_weight: float = Field(default=0.0, ge=0.0)
    congestion_weight: float = Field(default=0.0, ge=0.0)
    reward_sharing: Literal["team", "individual"] = "team"
    include_agent_id: bool = False
    load_clip: float = Field(default=4.0, gt=0.0)
    agent_down_prob: float = Field(default=0.0, ge=0.0, lt=1.0)
