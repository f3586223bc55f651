"""Experience log backends (Redis streams or SQLite) behind one async interface."""

from __future__ import annotations

import asyncio

from env.errors import UserError
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
from router.settings import Settings

__all__ = [
    "DuplicateFeedback",
    "ExperienceStore",
    "Outbox",
    "RedisExperienceStore",
    "SqliteExperienceStore",
    "StoreError",
    "StoreUnavailable",
    "UnknownDecision",
    "open_store",
]


async def open_store(settings: Settings) -> ExperienceStore:
    """The store ``settings`` ask for: Redis when ``redis_url`` is set, else SQLite.

    A Redis store connects lazily, so an unreachable Redis does not fail here: it writes to its
    durable outbox (``settings.outbox_path``) meanwhile, and starts draining it (also what a
    previous run left there) at once.

    Raises:
        UserError: the Redis URL is malformed, or the SQLite file or the outbox cannot be opened.
    """
    if settings.redis_url:
        try:
            outbox = await asyncio.to_thread(Outbox, settings.outbox_path, settings.redis_prefix)
        except StoreUnavailable as exc:
            raise UserError(f"ROUTER_OUTBOX_PATH: {exc}") from None
        try:
            store = RedisExperienceStore(
                settings.redis_url,
                prefix=settings.redis_prefix,
                stream_maxlen=settings.stream_maxlen,
                decision_ttl_s=settings.decision_ttl_s,
                outbox=outbox,
            )
        except ValueError as exc:
            await outbox.close()
            raise UserError(f"ROUTER_REDIS_URL: {exc}") from None
        store.start()
        return store
    try:
        return await asyncio.to_thread(
            SqliteExperienceStore, settings.sqlite_path, settings.decision_ttl_s
        )
    except StoreUnavailable as exc:
        raise UserError(str(exc)) from None
