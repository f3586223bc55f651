"""Structured log lines of the router's own loggers (``router`` and its children).

:func:`configure_logging` gives the ``router`` logger one stderr handler that writes each record
as one JSON object (or ``key=value`` text), e.g.::

    {"ts": "2026-01-31T12:00:00.123+00:00", "level": "info", "logger": "router.access",
     "msg": "request", "method": "POST", "endpoint": "/v1/route", "status": 200,
     "latency_ms": 14.2, "decision_id": "5f0c...", "agent": "math-solver", "policy_version": "2026..."}

Fields come from the ``extra`` of a log call; only the names in :data:`FIELDS` are written, so
a caller cannot leak a prompt by passing it as an extra. The prompt text is never logged: a
request line carries the decision id, the endpoint, the agent, the latency and the policy version.

That ``router.access`` line is the request log: ``agent-router serve`` turns uvicorn's own access
log off (it would repeat the method, path and status of every request in a second line, at a cost
on the request path); ``uvicorn.error`` is left as uvicorn configures it.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any, Literal

ROOT_LOGGER = "router"
ACCESS_LOGGER = "router.access"

#: ``extra`` keys written to a log line, in this order.
FIELDS = (
    "method",
    "endpoint",
    "path",
    "status",
    "latency_ms",
    "decision_id",
    "agent",
    "policy_version",
    "explore",
    "batch_size",
    "stages_ms",
    "error",
)

_LEVELS = {
    "critical": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
    "trace": logging.DEBUG,
}


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name, None) is not None}


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``ts``, ``level``, ``logger``, ``msg``, then the known extras."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False, default=str)


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=router.access msg="request" endpoint=/v1/route ...``."""

    def format(self, record: logging.LogRecord) -> str:
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={json.dumps(record.getMessage(), ensure_ascii=False)}"]
        for name, value in _fields(record).items():
            text = ",".join(f"{k}:{v}" for k, v in value.items()) if isinstance(value, dict) else str(value)
            parts.append(f"{name}={json.dumps(text, ensure_ascii=False) if (' ' in text or not text) else text}")
        line = " ".join(parts)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _RouterHandler(logging.StreamHandler):
    """Marks the handler :func:`configure_logging` installed (so a second call replaces it)."""


def configure_logging(level: str = "info", fmt: Literal["json", "text"] = "json") -> logging.Logger:
    """Give the ``router`` logger one stderr handler with the chosen format; idempotent.

    The logger stops propagating to the root logger (so its lines are not written twice when
    something else configures the root).

    Args:
        level: ``critical`` ... ``debug`` (``trace`` counts as ``debug``), as uvicorn's ``--log-level``.
        fmt: ``json`` (one object a line) or ``text`` (``key=value``).

    Returns:
        The ``router`` logger.
    """
    logger = logging.getLogger(ROOT_LOGGER)
    for handler in list(logger.handlers):
        if isinstance(handler, _RouterHandler):
            logger.removeHandler(handler)
    handler = _RouterHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else KeyValueFormatter())
    logger.addHandler(handler)
    logger.setLevel(_LEVELS.get(level.lower(), logging.INFO))
    logger.propagate = False
    return logger
