"""Experience log backends (Redis streams or SQLite) behind one async interface."""

from __future__ import annotations

from experience.base import (
    DuplicateFeedback,
    ExperienceStore,
    StoreError,
    StoreUnavailable,
    UnknownDecision,
)
from experience.outbox import Outbox
from experience.redis_store import RedisExperienceStore
from experience.sqlite_store import SqliteExperienceStore

__all__ = [
    "DuplicateFeedback",
    "ExperienceStore",
    "Outbox",
    "RedisExperienceStore",
    "SqliteExperienceStore",
    "StoreError",
    "StoreUnavailable",
    "UnknownDecision",
]
