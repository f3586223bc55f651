"""The choice of backend, made once on each side: the server's store (:func:`open_store`) and the
retrain job's reader (:func:`open_source`) are Redis when a Redis URL is set, else SQLite."""

from __future__ import annotations

import asyncio
from pathlib import Path

import redis.asyncio as aioredis

from contract.errors import UserError
from experience.base import ExperienceStore, StoreUnavailable
from experience.outbox import Outbox
from experience.readers import ExperienceSource, RedisGroupSource, SqliteSource
from experience.redis_client import RedisErrors
from experience.redis_store import RedisExperienceStore
from experience.sqlite_store import SqliteExperienceStore


async def open_store(client: aioredis.Redis | None, *, prefix: str, stream_maxlen: int, decision_ttl_s: int,
                     outbox_path: str | Path, sqlite_path: str | Path, sqlite_decision_sync: bool,
                     redis_errors: RedisErrors) -> ExperienceStore:
    """The server's store: Redis streams on ``client`` (with the durable outbox at
    ``outbox_path``, started), else the SQLite file ``sqlite_path``.

    Raises:
        UserError: the outbox or the SQLite file cannot be opened.
    """
    if client is not None:
        try:
            outbox = await asyncio.to_thread(Outbox, outbox_path, prefix)
        except StoreUnavailable as exc:
            raise UserError(f"ROUTER_OUTBOX_PATH: {exc}") from None
        store = RedisExperienceStore(client, prefix=prefix, stream_maxlen=stream_maxlen,
                                     decision_ttl_s=decision_ttl_s, outbox=outbox, redis_errors=redis_errors)
        store.start()
        return store
    try:
        return await asyncio.to_thread(SqliteExperienceStore, sqlite_path, decision_ttl_s,
                                       decision_sync=sqlite_decision_sync)
    except StoreUnavailable as exc:
        raise UserError(str(exc)) from None


def open_source(redis_url: str | None, *, prefix: str, group: str, consumer: str,
                sqlite_path: str | Path) -> ExperienceSource:
    """The retrain job's reader: the Redis consumer group when ``redis_url`` is set, else the
    SQLite store.

    Raises:
        SourceError: the SQLite file does not exist.
    """
    if redis_url:
        return RedisGroupSource(redis_url, prefix, group, consumer)
    return SqliteSource(sqlite_path)
