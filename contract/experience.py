"""The experience record: a routing decision's context plus its feedback, versioned.

The server writes a :class:`DecisionContext` at ``POST /v1/route`` and an :class:`ExperienceRecord`
(context + :class:`Feedback`) at ``POST /v1/feedback``; the retrain job reads records back with
:func:`parse_record`, from Redis and SQLite alike. Both are JSON objects; the prompt embedding is
base64 of its little-endian float16 bytes (:func:`encode_embedding`).

Schema versions: ``schema_version`` 2 is this one. Records without it are version 1 (written before
the field existed): the same keys, and before exploration existed no ``propensity``; they parse
unchanged.
"""

from __future__ import annotations

import base64
import math
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

SCHEMA_VERSION = 3

#: Where records live: the Redis stream ``<prefix>:<EXPERIENCE_STREAM>`` (field ``record``) and
#: the SQLite table ``experience(seq, record)``; both hold the record's JSON text.
EXPERIENCE_STREAM = "experience"
RECORD_FIELD = "record"
SQLITE_EXPERIENCE_QUERY = "SELECT seq, record FROM experience WHERE seq > ? ORDER BY seq LIMIT ?"


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

    def behaviour_log_prob(self) -> float:
        """Log-probability the action was chosen with: ``log(propensity)`` for a sampled decision,
        the policy's ``log_prob`` for an argmax one (the logging policy of off-policy methods)."""
        if self.explore and self.propensity is not None:
            return math.log(max(self.propensity, 1e-12))
        return self.log_prob

    def to_json_dict(self) -> dict[str, Any]:
        """The JSON object written to the log (``prompt`` left out when not stored)."""
        unset = {name for name in ("prompt", "cost_weight") if getattr(self, name) is None}
        return self.model_dump(mode="json", exclude=unset)


class Feedback(BaseModel):
    """What the client reported about a decision (``POST /v1/feedback``).

    Attributes:
        quality: in [0, 1].
        cost_usd: USD of the call, if known.
        latency_ms: milliseconds of the call, if known.
        feedback_at: ISO 8601 UTC time the feedback was recorded.
    """

    model_config = ConfigDict(extra="forbid")

    quality: float = Field(ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    feedback_at: str

    @field_validator("feedback_at")
    @classmethod
    def _feedback_utc(cls, value: str) -> str:
        return _iso_utc(value)

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


class ExperienceRecord(DecisionContext):
    """A :class:`DecisionContext` with its :class:`Feedback`: one row of the experience log."""

    quality: float = Field(ge=0.0, le=1.0)
    cost_usd: float | None = Field(default=None, ge=0.0)
    latency_ms: float | None = Field(default=None, ge=0.0)
    feedback_at: str

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


def parse_record(raw: Any) -> ExperienceRecord:
    """A stored record (a JSON object, or its text) of any known schema version; an
    :class:`ExperienceRecord` is returned as it is.

    Raises:
        ValueError: not a record of a known version (pydantic's ``ValidationError`` included).
    """
    if isinstance(raw, str | bytes):
        return ExperienceRecord.model_validate_json(raw)
    return ExperienceRecord.model_validate(raw)
