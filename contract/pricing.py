"""What a call to an agent is expected to cost, from the prompt alone: the rule the dataset format
uses to derive a missing ``cost_usd`` (``docs/dataset-format.md``), which the observation and the
server's cost cap use too, so that training and serving price a prompt the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

#: Characters per token of the token count (the usual rule of thumb for English BPE).
CHARS_PER_TOKEN = 4.0
#: Output tokens assumed when nothing better is known.
DEFAULT_OUTPUT_TOKENS = 256


class AgentPrice(BaseModel):
    """An agent's price list (``env.dataset.AgentSpec``'s price fields).

    Attributes:
        price_per_1m_tokens: USD per 1M tokens (input and output), or None.
        cost_per_call_usd: flat USD per call, or None; takes precedence over the token price.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    price_per_1m_tokens: float | None = Field(default=None, ge=0)
    cost_per_call_usd: float | None = Field(default=None, ge=0)


def prompt_tokens(prompt: str) -> int:
    """Tokens of a prompt by the dataset's rule: ``ceil(len(prompt) / 4)`` (characters, not bytes)."""
    return math.ceil(len(prompt) / CHARS_PER_TOKEN)


def call_cost_usd(price: AgentPrice, tokens: int, output_tokens: int = DEFAULT_OUTPUT_TOKENS) -> float:
    """USD of one call of a ``tokens``-token prompt: ``cost_per_call_usd`` if set, else
    ``price_per_1m_tokens * (tokens + output_tokens) / 1e6``; 0.0 for an agent without a price."""
    if price.cost_per_call_usd is not None:
        return price.cost_per_call_usd
    if price.price_per_1m_tokens is None:
        return 0.0
    return price.price_per_1m_tokens * (tokens + output_tokens) / 1e6


def expected_costs_usd(prices: Sequence[AgentPrice], tokens: Sequence[int] | np.ndarray) -> np.ndarray:
    """``[P, K]`` float64 USD: :func:`call_cost_usd` of each of ``P`` prompts (their token counts)
    at each of ``K`` agents."""
    t = np.asarray(tokens, dtype=np.float64).reshape(-1, 1)
    per_call = np.array([np.nan if p.cost_per_call_usd is None else p.cost_per_call_usd for p in prices])
    per_token = np.array([p.price_per_1m_tokens or 0.0 for p in prices]) / 1e6
    by_tokens = per_token * (t + DEFAULT_OUTPUT_TOKENS)
    return np.where(np.isnan(per_call), by_tokens, per_call)
