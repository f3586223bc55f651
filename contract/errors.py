"""Errors raised for a user's mistake (bad file, bad config): the CLI prints them on one line."""

from __future__ import annotations

from pathlib import Path


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
