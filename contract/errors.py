"""The project's errors: :class:`UserError` (a user's mistake: bad file, bad config; the CLI prints
it on one line) and :class:`DomainError` (a request a client can act on; the server answers it
with its HTTP status, :mod:`router.errors`)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar


class UserError(Exception):
    """Base class of every error caused by user input rather than a bug.

    The CLI catches it and prints ``error: <message>`` on one line (exit code 2).
    """


class DataError(UserError):
    """A dataset or agents file that does not follow the contract (docs/dataset-format.md).

    Args:
        path: the offending file.
        message: what is wrong.
        line: 1-based line number in a JSON Lines file, when the problem is on one line.
    """

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class DomainError(Exception):
    """An error of the service that a client can act on.

    Attributes:
        status_code: the HTTP status it is answered with.
        retry_after: answer with ``Retry-After: ROUTER_RETRY_AFTER_S`` (the request is safe to retry).
        public_detail: the message sent instead of ``str(exc)`` (None: ``str(exc)``), for errors
            whose text is for the server's log only.
    """

    status_code: ClassVar[int] = 422
    retry_after: ClassVar[bool] = False
    public_detail: ClassVar[str | None] = None
