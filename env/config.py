"""Configuration of :class:`env.prompt_env.PromptEnv`."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


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
        cost_weight_range: ``(low, high)``, USD^-1: every episode of every world draws its own
            ``cost_weight``, log-uniform in the range, or 0 with probability ``cost_weight_zero_share``;
            the observation then holds it (one policy for every trade-off; LLM Bandit, arXiv
            2502.02743). None: ``cost_weight`` for every episode, and no preference in the obs.
        cost_weight_zero_share: the share of episodes at ``cost_weight`` 0 (quality alone).
        prompt_features: the observation holds the prompt's length in tokens, each agent's
            expected cost of it and the cost penalty (``contract.observation``), and the actor
            subtracts the penalty from its logits; needs the agents' prices.
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
    cost_weight_range: tuple[float, float] | None = None
    cost_weight_zero_share: float = Field(default=0.1, ge=0.0, le=1.0)
    prompt_features: bool = True

    @field_validator("cost_weight_range")
    @classmethod
    def _range(cls, value: tuple[float, float] | None) -> tuple[float, float] | None:
        if value is not None and not 0.0 < value[0] < value[1] < float("inf"):
            raise ValueError("cost_weight_range must be (low, high) with 0 < low < high")
        return value
