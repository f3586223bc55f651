"""The OpenAI side of the proxy: the request it takes, the model names it knows, its error bodies.

Model names (``GET /v1/models``):

- ``router``: the learned router picks the agent, at the server's default cost preference;
- ``router-cw-<cost_weight>``: the same at a cost preference of ``<cost_weight>`` USD^-1 (a policy
  trained for every trade-off; RouteLLM likewise names a threshold in the model, ``router-mf-0.116``);
- an agent's name: that agent, bypassing the router.

The router sees what the policy was trained on: the prompt is the last user message (its text
parts joined by newlines), and the session is the ``X-Session-Id`` header or the ``user`` field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from router.errors import openai_error_body

ROUTER_MODEL = "router"
PREFERENCE_PREFIX = "router-cw-"
#: Fields of the request the proxy reads itself and does not send upstream.
ROUTER_FIELDS = ("explore",)


class ChatMessage(BaseModel):
    """One message of the conversation (other OpenAI fields pass through)."""

    model_config = ConfigDict(extra="allow")

    role: str = Field(min_length=1, max_length=64)
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``: OpenAI's body; fields not named here pass through to the agent.

    Attributes:
        model: ``router``, ``router-cw-<cost_weight>``, or an agent's name (module docstring).
        messages: the conversation; the last ``user`` message is the prompt routed on.
        stream: answer with server-sent events.
        stream_options: OpenAI's; ``include_usage`` adds the final usage chunk.
        user: the end user, also the session when no ``X-Session-Id`` header is sent.
        explore: (this router's) sample the agent from the exploration distribution, as
            ``explore`` on ``/v1/route``; None: ``ROUTER_PROXY_EXPLORE``.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1, max_length=256)
    messages: list[ChatMessage] = Field(min_length=1, max_length=10_000)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    user: str | None = Field(default=None, max_length=256)
    explore: bool | None = None

    def prompt(self) -> str | None:
        """The text of the last user message; None when there is none or it has no text."""
        for message in reversed(self.messages):
            if message.role != "user":
                continue
            if isinstance(message.content, str):
                return message.content
            if isinstance(message.content, list):
                parts = [p.get("text") for p in message.content if p.get("type") == "text"]
                text = "\n".join(p for p in parts if isinstance(p, str))
                return text or None
            return None
        return None

    def upstream_body(self, model: str) -> dict[str, Any]:
        """The body sent to the agent: this one, with its ``model`` and without the router's fields."""
        body = self.model_dump(mode="json", exclude_unset=True, exclude=set(ROUTER_FIELDS))
        body["model"] = model
        return body


@dataclass(frozen=True)
class ModelChoice:
    """What a model name asks for: the router (at ``cost_weight``, None: the default) or one ``agent``."""

    agent: str | None = None
    cost_weight: float | None = None


class OpenAIError(Exception):
    """An error answered in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

    Attributes:
        status_code: the HTTP status.
        type: OpenAI's error ``type`` (``invalid_request_error``, ``authentication_error``, ...).
        code: a short machine-readable code, or None.
        param: the request field at fault, or None.
    """

    def __init__(self, status_code: int, message: str, type: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None) -> None:
        super().__init__(message)
        self.status_code, self.type, self.code, self.param = status_code, type, code, param

    def body(self) -> dict[str, Any]:
        return openai_error_body(str(self), self.type, self.code, self.param)


async def openai_error_response(request: Request, exc: Exception) -> JSONResponse:
    """The app's handler of :class:`OpenAIError`: its status and OpenAI's error body."""
    assert isinstance(exc, OpenAIError)
    return JSONResponse(exc.body(), status_code=exc.status_code)


def parse_model(name: str, upstream_agents: list[str]) -> ModelChoice:
    """The :class:`ModelChoice` of a model name.

    Raises:
        OpenAIError: 404 for a name that is neither the router nor an agent with an upstream;
            400 for a ``router-cw-`` suffix that is not a finite number >= 0.
    """
    if name == ROUTER_MODEL:
        return ModelChoice()
    if name.startswith(PREFERENCE_PREFIX):
        text = name[len(PREFERENCE_PREFIX):]
        try:
            weight = float(text)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight) or weight < 0:
            raise OpenAIError(400, f"model {name!r}: the cost weight after {PREFERENCE_PREFIX!r} must be a number >= 0",
                              param="model", code="invalid_model")
        return ModelChoice(cost_weight=weight)
    if name in upstream_agents:
        return ModelChoice(agent=name)
    raise OpenAIError(404, f"model {name!r} does not exist; the models are {ROUTER_MODEL}, "
                      f"{PREFERENCE_PREFIX}<cost_weight> and {', '.join(upstream_agents)}",
                      param="model", code="model_not_found")


class ModelCard(BaseModel):
    """One entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str


class ModelList(BaseModel):
    """``GET /v1/models``: OpenAI's list."""

    object: Literal["list"] = "list"
    data: list[ModelCard]
