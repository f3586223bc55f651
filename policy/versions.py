"""Which version every server serves: the protocol in Redis, written once for the server's admin
reloads (asyncio) and the retrain job (blocking).

Names under ``<prefix>:``:

- ``policy:current``: a string, the version name every replica serves (the truth);
- ``policy:events``: a pub/sub channel with a message on every publish (a replica re-reads the
  key on each, and also on start-up, after a reconnect and every ``ROUTER_POLICY_POLL_S``);
- ``retrain:published``: a set of every version published, which the retrain job's recovery reads
  (a version that passed its gate but is not in it was saved and never published);
- ``retrain:last_round``: the JSON figures of the last retraining round, which every server
  exports in ``/metrics``.

A publish is SET + PUBLISH + SADD in one MULTI (:meth:`VersionKeys.queue_publish`): the last
publish wins and every replica converges on it. ``docs/hot-swap.md`` has the whole story.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

CURRENT_KEY = "policy:current"
EVENTS_CHANNEL = "policy:events"
PUBLISHED_SET = "retrain:published"
RETRAIN_ROUND_KEY = "retrain:last_round"

P = TypeVar("P")


@dataclass(frozen=True)
class VersionKeys:
    """The Redis names of the version protocol under one key prefix (see the module docstring)."""

    prefix: str

    @property
    def current(self) -> str:
        return f"{self.prefix}:{CURRENT_KEY}"

    @property
    def events(self) -> str:
        return f"{self.prefix}:{EVENTS_CHANNEL}"

    @property
    def published(self) -> str:
        return f"{self.prefix}:{PUBLISHED_SET}"

    @property
    def last_round(self) -> str:
        return f"{self.prefix}:{RETRAIN_ROUND_KEY}"

    def queue_publish(self, pipe: P, version: str) -> P:
        """Queue the publish of ``version`` (a version directory's name) on ``pipe``, a
        transactional redis-py pipeline, blocking or asyncio: the caller executes it."""
        target: Any = pipe
        target.set(self.current, version).publish(self.events, version).sadd(self.published, version)
        return pipe
