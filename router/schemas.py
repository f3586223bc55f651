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
    cost_weight: float | None = Field(
        None,
        ge=0.0,
        le=1e9,
        allow_inf_nan=False,
        description="Cost preference in USD^-1: the request is routed to maximise quality - cost_weight * "
        "cost_usd. Only for a policy trained for every trade-off (GET /admin/policy); omitted: ROUTER_COST_WEIGHT, "
        "else the policy's default. Larger values choose cheaper agents.",
    )
    max_cost_usd_per_1k: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="In place of cost_weight, a budget in USD per 1,000 requests like this one: only agents whose "
        "expected cost of this prompt (price x tokens, as the dataset format derives it) fits are allowed, and "
        "among them the policy routes for quality. 422 when no allowed agent fits, with cost_weight, or for a "
        "policy that does not know the agents' prices.",
    )
    explore: bool = Field(
        False,
        description="Sample the agent from the policy's distribution, mixed with uniform so that every "
        "allowed agent has probability at least ROUTER_EXPLORE_FLOOR, instead of taking its most "
        "probable agent. The sampling probability is logged as the propensity for retraining.",
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
    propensity: float = Field(
        description="Probability with which the agent was chosen: its probability in the "
        "exploration distribution when explore was on, 1.0 for the policy's most probable agent."
    )
    cost_weight: float | None = Field(
        None, description="The cost preference the policy routed with (USD^-1); null for a policy trained at one "
        "cost weight."
    )


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
    in_flight: int = Field(
        0, description="Requests routed to the agent and not yet released by feedback or by "
        "ROUTER_INFLIGHT_TTL_S (all replicas with Redis; this process without)."
    )
    load: float = Field(
        0.0, description="Normalised load fed into the policy's observation: "
        "min(max(0, in_flight - capacity) / capacity, load_clip); 0 when unbounded."
    )
    down: bool = Field(False, description="Marked down by an admin: no decision picks it.")
    cooldown_s: float | None = Field(
        None, description="Seconds it still cools down (its feedback quality collapsed: no decision picks it); "
        "null when it does not."
    )


class HealthResponse(BaseModel):
    """Body of ``GET /healthz``."""

    status: Literal["ok"] = Field(description="Always 'ok' when the server answers.")
    policy_version: str = Field(description="Version of the policy being served.")


class ReadyResponse(BaseModel):
    """Body of ``GET /readyz`` when the server can take traffic."""

    status: Literal["ready"] = Field(description="Always 'ready' (503 otherwise).")
    policy_version: str = Field(description="Version of the policy being served.")
    experience_log: str = Field(
        description="Where decisions are written now: 'redis', 'outbox' (Redis unreachable; the durable "
        "local outbox takes them) or 'sqlite'."
    )


class ErrorResponse(BaseModel):
    """Body of every error response."""

    detail: str = Field(description="What went wrong, in one readable sentence.")


class PolicyReloadRequest(BaseModel):
    """Body of ``POST /admin/policy/reload`` (the body may also be left out)."""

    model_config = _REQUEST

    checkpoint: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="A version name: a directory of the checkpoint root (ROUTER_CHECKPOINT). Paths are "
        "refused. Omitted or null: the newest version under ROUTER_CHECKPOINT.",
    )


class PolicyInfo(BaseModel):
    """Body of ``GET /admin/policy`` and of a successful reload or rollback."""

    version: str = Field(description="Version of the policy this replica serves.")
    path: str = Field(description="Its version directory on this replica.")
    created_at: str | None = Field(None, description="When the checkpoint was written (ISO 8601).")
    loaded_at: str = Field(description="When this replica started serving it (ISO 8601, UTC).")
    agents: list[str] = Field(description="Agent names in action order.")
    embedding_model: str = Field(description="Embedding model the policy was trained on.")
    weights_sha256: str | None = Field(None, description="SHA-256 of the weights file.")
    previous_version: str | None = Field(
        None, description="The version served before it here (the rollback target); null: none."
    )
    follows_redis: bool = Field(
        description="Whether this replica publishes and follows the version in Redis "
        "(<prefix>:policy:current); false: it swaps alone."
    )
