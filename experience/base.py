"""The experience log: what the router decided, and the feedback it got, for offline retraining.

A store keeps :class:`~contract.experience.DecisionContext` objects written by ``POST /v1/route``
until their :class:`~contract.experience.Feedback` comes, then appends the
:class:`~contract.experience.ExperienceRecord` (context + feedback) to the log. Records are read
back in write order with :meth:`ExperienceStore.read_experience`.
"""

from __future__ import annotations

import abc
import json
from datetime import UTC, datetime
from typing import Any

from contract.errors import DomainError
from contract.experience import DecisionContext, ExperienceRecord, Feedback


class StoreError(DomainError):
    """Base class of the errors an :class:`ExperienceStore` raises."""

    status_code = 503


class UnknownDecision(StoreError):
    """No decision with this id, or it expired before the feedback came (HTTP 404)."""

    status_code = 404

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        super().__init__(f"unknown or expired decision_id {decision_id!r}")


class DuplicateFeedback(StoreError):
    """The decision already has feedback; only the first is recorded (HTTP 409)."""

    status_code = 409

    def __init__(self, decision_id: str) -> None:
        self.decision_id = decision_id
        super().__init__(f"decision {decision_id!r} already has feedback")


class StoreUnavailable(StoreError):
    """The backend cannot be reached or did not confirm the write (HTTP 503); retrying is safe."""

    status_code = 503
    retry_after = True
    public_detail = "the experience store is unavailable; retry later"


def utc_now_iso() -> str:
    """The current time as ISO 8601 with a UTC offset, e.g. ``2025-01-31T12:00:00.123456+00:00``."""
    return datetime.now(UTC).isoformat()


def dump_json(obj: DecisionContext | Feedback | dict[str, Any]) -> str:
    """Compact JSON text of a context, feedback or record (no NaN)."""
    data = obj if isinstance(obj, dict) else obj.to_json_dict()
    return json.dumps(data, separators=(",", ":"), allow_nan=False)


class ExperienceStore(abc.ABC):
    """Durable, append-only log of decisions and their feedback. All methods are coroutines.

    Implementations must be safe to share between concurrent requests of one process and between
    several server processes using the same backend.
    """

    @abc.abstractmethod
    async def put_decision(self, context: DecisionContext) -> None:
        """Store a decision context until its feedback comes.

        Raises:
            StoreUnavailable: the write was not confirmed.
            ValueError: a decision with that id exists already.
        """

    @abc.abstractmethod
    async def record_feedback(self, decision_id: str, feedback: Feedback) -> ExperienceRecord:
        """Atomically append the experience record of ``decision_id`` and mark it as answered.

        Returns only once the record is durably written; when it raises, nothing was marked and
        the call can be retried. A decision takes one record of each ``feedback.source``: the
        client's feedback, and the proxy's call record (:func:`~contract.experience.record_key`).

        Args:
            decision_id: id returned by the route call.
            feedback: the feedback.

        Returns:
            The experience record written (context + feedback).

        Raises:
            UnknownDecision: no such decision, or it expired.
            DuplicateFeedback: the decision already has a record of this source.
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
            ``[(entry_id, record), ...]`` in write order, each record the JSON object stored
            (:func:`contract.experience.parse_record` reads it).

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

    async def writable(self) -> str:
        """Where a write would go now (``"redis"``, ``"outbox"``, ``"sqlite"``); for ``/readyz``.

        Raises:
            StoreUnavailable: nothing can take a write.
        """
        await self.ping()
        return type(self).__name__

    @abc.abstractmethod
    async def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
