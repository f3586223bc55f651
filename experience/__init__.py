"""The experience log, in one place: where records live (:mod:`experience.layout`), the server's
async writers (Redis streams with a durable outbox, or SQLite) behind one interface, the retrain
job's readers (:mod:`experience.readers`) and the choice of backend (:mod:`experience.backend`).
The record types are the contract's (:mod:`contract.experience`)."""

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
