"""Experience log backends (Redis streams or SQLite) behind one async interface."""

from __future__ import annotations

from router.experience.base import (
    DuplicateFeedback,
    ExperienceStore,
    StoreError,
    StoreUnavailable,
    UnknownDecision,
)
from router.experience.outbox import Outbox
from router.experience.redis_store import RedisExperienceStore
from router.experience.sqlite_store import SqliteExperienceStore

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
