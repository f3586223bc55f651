"""Request and response bodies of the HTTP API (they define the OpenAPI schema).

Requests are strict (no type coercion: ``"0.5"`` is not a number, ``1`` is not a bool) and reject
unknown fields.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_REQUEST = ConfigDict(extra="forbid", strict=True)


class RouteRequest(BaseModel):
    """Body of ``POST /v1/route``.

    The prompt length limit (``ROUTER_MAX_PROMPT_CHARS``) is a runtime setting, checked by the
    handler rather than here.
    """

    model_config = _REQUEST

    prompt: str = Field(
        description="The prompt to route: non-empty, not only whitespace. Its text is not stored "
        "(only its SHA-256 and embedding)."
    )
    session_id: str | None = Field(
        None,
        max_length=256,
        description="Optional id grouping the prompts of one conversation (for retraining).",
    )
    candidates: list[str] | None = Field(
        None,
        description="Agent names the router may choose from; omitted or null: all agents. "
        "Must be non-empty, without duplicates, and name known agents (GET /v1/agents).",
    )
    explore: bool = Field(
        False,
        description="Sample the agent from the policy's distribution instead of taking its most "
        "probable agent.",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or only whitespace")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("is not valid Unicode (it has a lone surrogate)") from None
        return value

    @field_validator("candidates")
    @classmethod
    def _candidates_shape(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return value
        if not value:
            raise ValueError("must name at least one agent (or be left out to allow all)")
        dupes = sorted({c for c in value if value.count(c) > 1})
        if dupes:
            raise ValueError(f"lists {', '.join(map(repr, dupes))} more than once")
        return value


class RouteResponse(BaseModel):
    """Body of a successful ``POST /v1/route``."""

    decision_id: str = Field(description="Id to send feedback for (uuid4, 32 hex digits).")
    agent: str = Field(description="Name of the chosen agent.")
    probabilities: dict[str, float] = Field(
        description="The policy's probability of every agent (masked agents 0); sums to 1."
    )
    policy_version: str = Field(description="Version of the policy that decided.")


class FeedbackRequest(BaseModel):
    """Body of ``POST /v1/feedback``: how the chosen agent did on the prompt."""

    model_config = _REQUEST

    decision_id: str = Field(
        min_length=1, max_length=128, description="decision_id returned by POST /v1/route."
    )
    quality: float = Field(
        ge=0.0, le=1.0, allow_inf_nan=False, description="Quality of the answer in [0, 1]."
    )
    cost_usd: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="What the call cost, in USD (>= 0)."
    )
    latency_ms: float | None = Field(
        None, ge=0.0, allow_inf_nan=False, description="End-to-end latency in milliseconds (>= 0)."
    )


class FeedbackResponse(BaseModel):
    """Body of ``POST /v1/feedback`` once the experience record is durably written (202)."""

    status: Literal["accepted"] = Field(description="Always 'accepted'.")
    decision_id: str = Field(description="The decision the feedback was recorded for.")


class AgentInfo(BaseModel):
    """One specialist agent, in the policy's action order."""

    name: str = Field(description="Unique agent name.")
    description: str | None = Field(None, description="Free text about the agent.")
    price_per_1m_tokens: float | None = Field(
        None, description="List price in USD per 1M tokens, if priced per token."
    )
    cost_per_call_usd: float | None = Field(
        None, description="Flat USD per call, if priced per call."
    )
    capacity: int | None = Field(None, description="Requests served per env step; null: unbounded.")


class HealthResponse(BaseModel):
    """Body of ``GET /healthz``."""

    status: Literal["ok"] = Field(description="Always 'ok' when the server answers.")
    policy_version: str = Field(description="Version of the policy being served.")


class ErrorResponse(BaseModel):
    """Body of every error response."""

    detail: str = Field(description="What went wrong, in one readable sentence.")
