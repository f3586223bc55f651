"""The experience log: what the router decided, and the feedback it got, for offline retraining.

A *decision context* is the JSON object written by ``POST /v1/route`` (see
:func:`router.service.decision_context`); an *experience record* is that context plus the
feedback fields (``quality``, ``cost_usd``, ``latency_ms``) and ``feedback_at`` (ISO 8601, UTC).
Records are appended in write order and read back with :meth:`ExperienceStore.read_experience`.
"""

from __future__ import annotations

import abc
from datetime import UTC, datetime
from typing import Any


class StoreError(Exception):
    """Base class of the errors an :class:`ExperienceStore` raises."""


class UnknownDecision(StoreError):
    """No decision with this id, or it expired before the feedback came (HTTP 404)."""

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        super().__init__(f"unknown or expired decision_id {decision_id!r}")


class DuplicateFeedback(StoreError):
    """The decision already has feedback; only the first is recorded (HTTP 409)."""

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        super().__init__(f"decision {decision_id!r} already has feedback")


class StoreUnavailable(StoreError):
    """The backend cannot be reached or did not confirm the write (HTTP 503); retrying is safe."""


def utc_now_iso() -> str:
    """The current time as ISO 8601 with a UTC offset, e.g. ``2025-01-31T12:00:00.123456+00:00``."""
    return datetime.now(UTC).isoformat()


def build_record(context: dict[str, Any], feedback: dict[str, Any]) -> dict[str, Any]:
    """The experience record: ``context``, then ``feedback``, then ``feedback_at`` if not given.

    Raises:
        ValueError: ``feedback`` would overwrite a key of ``context``.
    """
    clash = sorted(set(context) & set(feedback))
    if clash:
        raise ValueError(f"feedback keys {clash} clash with the decision context")
    record = {**context, **feedback}
    record.setdefault("feedback_at", utc_now_iso())
    return record


def require_decision_id(context: dict[str, Any]) -> str:
    """``context["decision_id"]``.

    Raises:
        ValueError: it is missing or not a non-empty string.
    """
    decision_id = context.get("decision_id")
    if not isinstance(decision_id, str) or not decision_id:
        raise ValueError("a decision context needs a non-empty string 'decision_id'")
    return decision_id


class ExperienceStore(abc.ABC):
    """Durable, append-only log of decisions and their feedback. All methods are coroutines.

    Implementations must be safe to share between concurrent requests of one process and between
    several server processes using the same backend.
    """

    @abc.abstractmethod
    async def put_decision(self, context: dict[str, Any]) -> None:
        """Store a decision context (JSON-serialisable, with a ``decision_id``) until feedback.

        Raises:
            StoreUnavailable: the write was not confirmed.
            ValueError: ``context`` has no ``decision_id``.
        """

    @abc.abstractmethod
    async def record_feedback(self, decision_id: str, feedback: dict[str, Any]) -> dict[str, Any]:
        """Atomically append the experience record of ``decision_id`` and mark it as answered.

        Returns only once the record is durably written; when it raises, nothing was marked and
        the call can be retried.

        Args:
            decision_id: id returned by the route call.
            feedback: JSON-serialisable feedback fields (``quality``, ``cost_usd``,
                ``latency_ms``); ``feedback_at`` is added when absent.

        Returns:
            The full experience record written (context + feedback).

        Raises:
            UnknownDecision: no such decision, or it expired.
            DuplicateFeedback: the decision already has feedback.
            StoreUnavailable: the backend is unreachable or did not confirm the write.
        """

    @abc.abstractmethod
    async def read_experience(
        self, after: str | None = None, count: int = 1000
    ) -> list[tuple[str, dict[str, Any]]]:
        """Up to ``count`` experience records written after entry id ``after``, oldest first.

        Args:
            after: an entry id returned by an earlier call (exclusive); None: from the start.
            count: maximum number of entries, at least 1.

        Returns:
            ``[(entry_id, record), ...]`` in write order.

        Raises:
            StoreUnavailable: the backend cannot be read.
            ValueError: ``count`` < 1 or ``after`` is not an id of this backend.
        """

    @abc.abstractmethod
    async def ping(self) -> None:
        """Check the backend answers.

        Raises:
            StoreUnavailable: it does not.
        """

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
