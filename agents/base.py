"""What every agent takes and gives: chat messages in, one completion (or a stream of text) out.

An agent is any object with the :class:`Agent` protocol; :func:`agents.registry.build_agent` makes
the known ones by model name.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from contract.errors import UserError

#: Completion tokens when the request names none.
DEFAULT_MAX_TOKENS = 64
#: The most completion tokens one request gets; a larger ``max_tokens`` is cut to it.
MAX_TOKENS_CAP = 512

Role = Literal["system", "developer", "user", "assistant", "tool"]
FinishReason = Literal["stop", "length"]


class AgentUnavailable(UserError):
    """An agent cannot run here (e.g. its weights' package is not installed); the message says how to fix it."""


class PromptTooLong(ValueError):
    """The prompt and ``max_tokens`` together pass a model's context (tokens); a client's mistake."""


@dataclass(frozen=True)
class Message:
    """One chat message: ``role`` and its text ``content`` (content parts already joined)."""

    role: Role
    content: str


@dataclass(frozen=True)
class GenerationParams:
    """How much to generate and how.

    Attributes:
        max_tokens: completion tokens at most (already capped at :data:`MAX_TOKENS_CAP`), >= 1.
        temperature: 0 or None: greedy; > 0: sampling at that temperature.
        top_p: nucleus sampling mass when sampling (None: 1.0).
        seed: seed of the sampler (None: not reseeded).
    """

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        """True unless ``temperature`` > 0."""
        return not self.temperature or self.temperature <= 0


@dataclass(frozen=True)
class Completion:
    """One finished answer.

    Attributes:
        text: the answer.
        finish_reason: ``stop`` (the agent ended it) or ``length`` (``max_tokens`` reached).
        prompt_tokens: tokens of the prompt, by the agent's own count.
        completion_tokens: tokens of ``text``, by the agent's own count.
    """

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


def cap_max_tokens(requested: int | None) -> int:
    """``requested`` completion tokens, :data:`DEFAULT_MAX_TOKENS` when None, at most :data:`MAX_TOKENS_CAP`."""
    return DEFAULT_MAX_TOKENS if requested is None else max(1, min(int(requested), MAX_TOKENS_CAP))


def last_user_text(messages: Sequence[Message]) -> str:
    """The content of the last ``user`` message ("" when there is none)."""
    return next((m.content for m in reversed(messages) if m.role == "user"), "")


class Agent(Protocol):
    """A model the server serves under ``name``."""

    name: str

    def load(self) -> None:
        """Get ready to answer (load weights); idempotent and thread-safe."""

    def complete(self, messages: Sequence[Message], params: GenerationParams) -> Completion:
        """Answer ``messages`` in one piece."""

    def stream(self, messages: Sequence[Message], params: GenerationParams) -> Iterator[str | Completion]:
        """Answer ``messages`` piece by piece: text deltas, then the whole :class:`Completion` last."""
