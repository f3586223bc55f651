"""The experience record: a routing decision's context plus its feedback, versioned.

The server writes a :class:`DecisionContext` at ``POST /v1/route`` and an :class:`ExperienceRecord`
(context + :class:`Feedback`) at ``POST /v1/feedback``; the retrain job reads records back with
:func:`parse_record`, from Redis and SQLite alike. Both are JSON objects; the prompt embedding is
base64 of its little-endian float16 bytes (:func:`encode_embedding`).

Schema versions: ``schema_version`` 4 is this one; every older record parses unchanged. Version 1
records (written before the field existed) have no ``propensity``; version 3 added
``prompt_tokens``; version 4 added the proxy's call record (``source: "proxy"``, ``quality`` None
unless the call failed) and its measurements (``outcome``, ``upstream_status``, ``ttft_ms``,
``usage_prompt_tokens``, ``usage_completion_tokens``).

A decision has at most one record of each ``source``: the client's feedback (``POST
/v1/feedback``) and, for a call the server proxied (``POST /v1/chat/completions``), the call
record it wrote itself when the call ended.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

SCHEMA_VERSION = 4



def encode_embedding(vector: np.ndarray) -> str:
    """Base64 of the little-endian float16 bytes of a ``[E]`` vector (``E * 2`` bytes)."""
    return base64.b64encode(np.asarray(vector, dtype="<f2").tobytes()).decode("ascii")


def decode_embedding(text: str) -> np.ndarray:
    """Inverse of :func:`encode_embedding`: ``[E]`` float32.

    Raises:
        ValueError: not valid base64 of float16 bytes.
    """
    raw = base64.b64decode(text, validate=True)
    if len(raw) % 2:
        raise ValueError("embedding has an odd number of bytes")
    return np.frombuffer(raw, dtype="<f2").astype(np.float32)


def _iso_utc(value: str) -> str:
    if datetime.fromisoformat(value).utcoffset() is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return value


class DecisionContext(BaseModel):
    """What the server knew and did when it routed one prompt.

    Attributes:
        schema_version: :data:`SCHEMA_VERSION` (1 for records that predate the field).
        decision_id: uuid4 hex.
        policy_version: the version that decided.
        created_at: ISO 8601 UTC time of the decision.
        session_id: the conversation it belongs to (None: a session of its own).
        prompt_sha256: hex SHA-256 of the prompt's UTF-8 bytes.
        prompt: the prompt text, only with ``ROUTER_STORE_PROMPTS=true`` (omitted otherwise).
        embedding: the prompt embedding, :func:`encode_embedding`.
        embedding_dtype: ``"float16"``.
        load: ``[K]`` normalised load in the observation.
        action_mask: ``[K]`` True where the agent was allowed.
        action: index of the chosen agent in the policy's action order; agent: its name.
        log_prob: natural log of the policy's probability of the action.
        probabilities: ``[K]`` the policy's distribution (masked agents 0).
        explore: the agent was sampled (True) or the argmax (False).
        propensity: probability the action was chosen with (1.0 for the argmax); None in
            version-1 records from before exploration.
        cost_weight: the cost preference (USD^-1) in the observation of a policy trained for
            every trade-off; None for other policies.
        prompt_tokens: the prompt's :func:`contract.pricing.prompt_tokens` (version 3; None in
            older records).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: int = Field(default=1, ge=1, le=SCHEMA_VERSION)
    decision_id: str = Field(min_length=1)
    policy_version: str
    created_at: str
    session_id: str | None = None
    prompt_sha256: str
    prompt: str | None = None
    embedding: str
    embedding_dtype: Literal["float16"] = "float16"
    load: list[float]
    action_mask: list[bool]
    action: int = Field(ge=0)
    agent: str
    log_prob: float
    probabilities: list[float]
    explore: bool = False
    propensity: float | None = Field(default=None, gt=0.0, le=1.0)
    cost_weight: float | None = Field(default=None, ge=0.0)
    prompt_tokens: int | None = Field(default=None, ge=0)

    @field_validator("created_at")
    @classmethod
    def _created_utc(cls, value: str) -> str:
        return _iso_utc(value)

    def embedding_vector(self) -> np.ndarray:
        """``[E]`` float32 (:func:`decode_embedding`)."""
        return decode_embedding(self.embedding)

    @property
    def explored_off_greedy(self) -> bool:
        """``explore`` sampled another agent than the policy's most probable one (ties: the first)."""
        return self.explore and self.action != max(range(len(self.probabilities)), key=self.probabilities.__getitem__)

    def behaviour_log_prob(self) -> float:
        """Log-probability the action was chosen with: ``log(propensity)`` for a sampled decision,
        the policy's ``log_prob`` for an argmax one (the logging policy of off-policy methods)."""
        if self.explore and self.propensity is not None:
            return math.log(max(self.propensity, 1e-12))
        return self.log_prob

    def _unset_context(self) -> set[str]:
        return {name for name in ("prompt", "cost_weight") if getattr(self, name) is None}

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object written to the log (``prompt`` left out when not stored)."""
        return self.model_dump(mode="json", exclude=self._unset_context())


Source = Literal["client", "proxy"]
Outcome = Literal["ok", "error", "timeout", "cancelled", "rejected"]

#: Feedback fields a client's record leaves out when they are None (only the proxy measures them).
_PROXY_FIELDS = ("outcome", "upstream_status", "ttft_ms", "usage_prompt_tokens", "usage_completion_tokens")


class FeedbackFields(BaseModel):
    """The fields of a decision's outcome, shared by :class:`Feedback` and :class:`ExperienceRecord`.

    Attributes:
        quality: in [0, 1]; None in the proxy's record of a call that succeeded (the quality can
            come later from the client, by decision id).
        cost_usd: USD of the call, if known.
        latency_ms: milliseconds of the call, if known (the proxy: until the last byte).
        feedback_at: ISO 8601 UTC time the feedback was recorded.
        source: ``"client"`` or ``"proxy"``.
        outcome: the proxied call's end: ``"ok"``, ``"error"`` (connection error, 5xx, 429, a
            broken stream), ``"timeout"``, ``"cancelled"`` (the client went away) or ``"rejected"``
            (the upstream refused the request itself, a 4xx); None for a client's feedback.
        upstream_status: the upstream's HTTP status (None: no response).
        ttft_ms: milliseconds until the first streamed token (streaming calls).
        usage_prompt_tokens, usage_completion_tokens: tokens from the upstream's ``usage``.
    """

    quality: float | None = Field(default=None, ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    feedback_at: str
    source: Source = "client"
    outcome: Outcome | None = None
    upstream_status: int | None = Field(default=None, ge=100, le=599)
    ttft_ms: float | None = Field(default=None, ge=0.0)
    usage_prompt_tokens: int | None = Field(default=None, ge=0)
    usage_completion_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _client_has_quality(self) -> FeedbackFields:
        if self.source == "client" and self.quality is None:
            raise ValueError("a client's feedback needs a quality")
        return self

    def _unset_feedback(self) -> set[str]:
        """What a client's record leaves out, so that it reads as before version 4: ``source`` and
        the unset proxy fields."""
        unset = {name for name in _PROXY_FIELDS if getattr(self, name) is None}
        if self.source == "client":
            unset.add("source")
        return unset


class Feedback(FeedbackFields):
    """How a decision went (:class:`FeedbackFields`): the client's report (``POST /v1/feedback``)
    or the proxy's measurement of the call it made (``POST /v1/chat/completions``)."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("feedback_at")
    @classmethod
    def _feedback_utc(cls, value: str) -> str:
        return _iso_utc(value)

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object of the feedback (:meth:`FeedbackFields._unset_feedback` left out)."""
        return self.model_dump(mode="json", exclude=self._unset_feedback())


class ExperienceRecord(FeedbackFields, DecisionContext):
    """A :class:`DecisionContext` with its :class:`Feedback`'s fields: one row of the experience log.
    A record with ``quality`` None (the proxy's record of a call that succeeded) is usable for cost
    and latency, not as a reward."""

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object as stored (the unset optional fields of both parts left out)."""
        return self.model_dump(mode="json", exclude=self._unset_context() | self._unset_feedback())

    @classmethod
    def join(cls, context: DecisionContext | dict[str, Any], feedback: Feedback | dict[str, Any]) -> ExperienceRecord:
        """The record of ``context`` and ``feedback``.

        Raises:
            ValueError: a feedback field clashes with the context, or the result does not validate.
        """
        ctx = context.to_json_dict() if isinstance(context, DecisionContext) else dict(context)
        fb = feedback.to_json_dict() if isinstance(feedback, Feedback) else dict(feedback)
        clash = sorted(set(ctx) & set(fb))
        if clash:
            raise ValueError(f"feedback keys {clash} clash with the decision context")
        return cls.model_validate({**ctx, **fb})


def record_key(decision_id: str, source: Source) -> str:
    """The key a store keeps one record under: the decision id for a client's feedback,
    ``<decision_id>#proxy`` for the proxy's call record (a decision may have one of each)."""
    return decision_id if source == "client" else f"{decision_id}#{source}"


def parse_record(raw: Any) -> ExperienceRecord:
    """A stored record (a JSON object, or its text) of any known schema version; an
    :class:`ExperienceRecord` is returned as it is.

    Raises:
        ValueError: not a record of a known version (pydantic's ``ValidationError`` included).
    """
    if isinstance(raw, str | bytes):
        return ExperienceRecord.model_validate_json(raw)
    return ExperienceRecord.model_validate(raw)
