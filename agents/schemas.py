"""The OpenAI chat-completions shapes the agents server reads and writes.

Requests are validated (:class:`ChatCompletionRequest`); fields of the OpenAI API that the server
does not use (``stop``, ``tools``, ``logprobs``, ``user``, ...) are accepted and ignored. Answers
are built as plain dicts in the OpenAI shapes: :func:`completion_body`, :func:`chunk_body`,
:func:`error_body`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agents.base import Completion, FinishReason, GenerationParams, Message, Role, cap_max_tokens


class ChatMessage(BaseModel):
    """A chat message: ``role`` and ``content``, given as a string, a list of text parts
    (``{"type": "text", "text": ...}``, joined without a separator) or null (read as "")."""

    model_config = ConfigDict(extra="allow")

    role: Role
    content: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _join_parts(cls, content: Any) -> Any:
        if not isinstance(content, list):
            return content
        texts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError("only text content parts ({\"type\": \"text\", \"text\": ...}) are supported")
            texts.append(part["text"])
        return "".join(texts)


class StreamOptions(BaseModel):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """``POST /v1/chat/completions``'s body.

    ``max_completion_tokens`` wins over ``max_tokens``; either is cut to
    :data:`agents.base.MAX_TOKENS_CAP`, and is :data:`agents.base.DEFAULT_MAX_TOKENS` when absent.
    ``temperature`` absent or 0: greedy. ``n`` may only be 1.
    """

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    seed: int | None = None
    n: int | None = Field(default=None, ge=1, le=1)
    stream: bool | None = False
    stream_options: StreamOptions | None = None

    @field_validator("messages")
    @classmethod
    def _has_user_or_system(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        if all(m.role == "assistant" for m in messages):
            raise ValueError("at least one message must not be the assistant's")
        return messages

    def to_messages(self) -> list[Message]:
        """The messages as the agents take them."""
        return [Message(role=m.role, content=m.content or "") for m in self.messages]

    def params(self) -> GenerationParams:
        """The generation parameters (``max_tokens`` capped)."""
        requested = self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens
        return GenerationParams(max_tokens=cap_max_tokens(requested), temperature=self.temperature,
                                top_p=self.top_p, seed=self.seed)

    @property
    def include_usage(self) -> bool:
        """True when a streamed answer ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)


def usage_body(completion: Completion) -> dict[str, int]:
    """OpenAI's ``usage`` object of ``completion``."""
    return {"prompt_tokens": completion.prompt_tokens, "completion_tokens": completion.completion_tokens,
            "total_tokens": completion.prompt_tokens + completion.completion_tokens}


def completion_body(id_: str, created: int, model: str, completion: Completion) -> dict[str, Any]:
    """A ``chat.completion`` object (one choice)."""
    return {
        "id": id_,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                     "logprobs": None, "finish_reason": completion.finish_reason}],
        "usage": usage_body(completion),
    }


def chunk_body(id_: str, created: int, model: str, delta: dict[str, Any] | None,
               finish_reason: FinishReason | None = None, usage: dict[str, int] | None = None,
               with_usage: bool = False) -> dict[str, Any]:
    """A ``chat.completion.chunk`` object: one choice with ``delta`` (None: no choice, the usage
    chunk), ``usage`` present when ``with_usage`` (null on every chunk but the usage one)."""
    body: dict[str, Any] = {
        "id": id_,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": [] if delta is None else [{"index": 0, "delta": delta, "logprobs": None,
                                              "finish_reason": finish_reason}],
    }
    if with_usage:
        body["usage"] = usage
    return body


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object ``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
