"""Client keys of the proxy and what each spends per day.

A proxy spends someone's money, so with upstreams configured ``POST /v1/chat/completions`` needs
``Authorization: Bearer <key>`` with a key of ``ROUTER_API_KEYS``. Only the SHA-256 of each key is
configured; a presented key is hashed and compared in constant time. With no keys it answers 403,
unless ``ROUTER_PROXY_OPEN=true`` on a loopback bind opens it to loopback clients (as key
``open``). A key's spending (USD, the cost of its proxied calls) is counted per UTC day, in Redis
when there is one (``<prefix>:spend:<key name>:<YYYY-MM-DD>``, shared by every replica) or in this
process; once a key has spent its ``budget_usd_per_day`` its requests answer 429 until the next
UTC day.
"""

from __future__ import annotations

import abc
import hashlib
import logging
import secrets
from collections import defaultdict
from datetime import UTC, datetime

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from experience.redis_client import RedisErrors
from router.settings import ClientKey, Settings, is_loopback

logger = logging.getLogger(__name__)

#: The key name of requests let in by ``ROUTER_PROXY_OPEN`` (metrics, logs).
OPEN_KEY = ClientKey(name="open", sha256="0" * 64)


class KeyRefused(Exception):
    """A request the keys do not let in.

    Attributes:
        status_code: 401 (no key, or a wrong one), 403 (the proxy is closed) or 429 (budget spent).
        code: OpenAI's error ``code`` (``invalid_api_key``, ``proxy_closed``, ``budget_exceeded``).
    """

    def __init__(self, status_code: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status_code, self.code = status_code, code


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key's UTF-8 bytes (what ``ROUTER_API_KEYS`` holds)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    """A fresh random key: ``ar-`` and 43 URL-safe characters (256 bits)."""
    return "ar-" + secrets.token_urlsafe(32)


def authenticate(settings: Settings, authorization: str | None, client_host: str | None) -> ClientKey:
    """The key a request presents.

    Args:
        settings: ``api_keys`` and ``proxy_open``.
        authorization: the ``Authorization`` header, or None.
        client_host: the client's address (for ``proxy_open``).

    Raises:
        KeyRefused: 401 without a bearer key or with a wrong one; 403 when no key is configured and
            the proxy is not open to this client.
    """
    if not settings.api_keys:
        if settings.proxy_open and is_loopback(client_host):
            return OPEN_KEY
        raise KeyRefused(403, "proxy_closed", "the proxy is closed: start the server with ROUTER_API_KEYS (see "
                         "'agent-router keys new') and send 'Authorization: Bearer <key>', or, on a loopback bind, "
                         "ROUTER_PROXY_OPEN=true")
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise KeyRefused(401, "invalid_api_key", "missing API key: send 'Authorization: Bearer <key>'")
    digest = hash_key(token)
    match = None
    for key in settings.api_keys:  # compare with every key, so the time does not tell which matched
        if secrets.compare_digest(digest, key.sha256.lower()):
            match = key
    if match is None:
        raise KeyRefused(401, "invalid_api_key", "invalid API key")
    return match


def utc_day() -> str:
    """Today's UTC date, ``YYYY-MM-DD``."""
    return datetime.now(UTC).strftime("%Y-%m-%d")


class KeySpend(abc.ABC):
    """USD spent per key and UTC day. Coroutines, safe to share."""

    @abc.abstractmethod
    async def spent(self, key: str) -> float:
        """USD ``key`` spent today (0.0 when it cannot be read: the budget then fails open)."""

    @abc.abstractmethod
    async def add(self, key: str, usd: float) -> None:
        """Count ``usd`` more for ``key`` today (never raises)."""

    async def check(self, key: ClientKey) -> None:
        """Raises:
        KeyRefused: 429 when ``key`` has spent its ``budget_usd_per_day`` today."""
        if key.budget_usd_per_day is None:
            return
        spent = await self.spent(key.name)
        if spent >= key.budget_usd_per_day:
            raise KeyRefused(429, "budget_exceeded", f"key {key.name!r} has spent its budget of "
                             f"{key.budget_usd_per_day:g} USD for today ({spent:.6g} USD); it renews at 00:00 UTC")


class LocalKeySpend(KeySpend):
    """This process's tally (without Redis)."""

    def __init__(self) -> None:
        self._spent: dict[tuple[str, str], float] = defaultdict(float)

    async def spent(self, key: str) -> float:
        return self._spent[(key, utc_day())]

    async def add(self, key: str, usd: float) -> None:
        day = utc_day()
        for old in [k for k in self._spent if k[1] != day]:
            del self._spent[old]
        self._spent[(key, day)] += usd


class RedisKeySpend(KeySpend):
    """The tally of every replica: ``INCRBYFLOAT <prefix>:spend:<key>:<day>``, kept two days."""

    def __init__(self, client: aioredis.Redis, prefix: str, errors: RedisErrors) -> None:
        self._redis, self.prefix, self._errors = client, prefix, errors

    def _key(self, key: str) -> str:
        return f"{self.prefix}:spend:{key}:{utc_day()}"

    async def spent(self, key: str) -> float:
        try:
            value = await self._redis.get(self._key(key))
        except (RedisError, OSError) as exc:
            self._errors["key_spend"] += 1
            logger.warning("cannot read the spending of key %s: %s", key, type(exc).__name__)
            return 0.0
        return float(value) if value is not None else 0.0

    async def add(self, key: str, usd: float) -> None:
        if usd <= 0:
            return
        name = self._key(key)
        try:
            pipe = self._redis.pipeline(transaction=True)
            pipe.incrbyfloat(name, usd)
            pipe.expire(name, 2 * 86400)
            await pipe.execute()
        except (RedisError, OSError) as exc:
            self._errors["key_spend"] += 1
            logger.warning("cannot count %.6g USD for key %s: %s", usd, key, type(exc).__name__)
