"""Retraining round after round (``agent-router retrain --every 10m``): the same
:func:`~training.retrain.job.run_retrain` each round, its figures appended to a JSON Lines file
and, with Redis, written to ``<prefix>:retrain:last_round`` (:mod:`policy.versions`) for the servers' ``/metrics``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisError

from contract.errors import UserError
from policy.versions import VersionKeys
from training.json_safe import finite_or_null
from training.retrain.config import RetrainConfig
from training.retrain.job import RetrainResult, run_retrain

logger = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_interval(text: str) -> float:
    """Seconds of ``"90s"``, ``"10m"``, ``"1h"`` or a plain number of seconds (> 0).

    Raises:
        UserError: anything else.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise UserError(f"--every must be a positive duration like 90s, 10m or 1h, not {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def round_figures(round_index: int, result: RetrainResult) -> dict[str, Any]:
    """One round's figures: status, versions, records (and the reasons of those skipped), the agent
    changes it applied, and the gate's estimates (DR, SNIPS, effective sample size of each policy;
    static rewards) where the round got that far."""
    figures: dict[str, Any] = {"round": round_index, "time": datetime.now(UTC).isoformat(),
                               "status": result.status, "serving_version": result.serving_version,
                               "version": result.version, "records": result.records, "used": result.used,
                               "published": result.version if result.status == "published" else None,
                               "agent_changes": result.agent_changes, "skipped": result.skipped}
    gate = result.gate or {}
    logged = gate.get("logged")
    if logged:
        for who in ("serving", "candidate"):
            for key in ("dr", "snips", "ess"):
                figures[f"{who}_{key}"] = logged[who][key]
        figures["held_out"] = logged["decisions"]
        figures["verdict"] = logged["verdict"]
    static = gate.get("static")
    if static:
        figures["static_serving_reward"] = static["serving"]["reward"]
        figures["static_candidate_reward"] = static["candidate"]["reward"]
    if gate:
        figures["passed"], figures["reason"] = gate["passed"], gate["reason"]
    return figures


def record_round(figures: dict[str, Any], metrics_file: Path | None, cfg: RetrainConfig) -> None:
    """Append ``figures`` to ``metrics_file`` and, with Redis, SET them (JSON) at
    ``<prefix>:retrain:last_round`` (:mod:`policy.versions`); a Redis failure is logged, not raised."""
    if metrics_file is not None:
        metrics_file.parent.mkdir(parents=True, exist_ok=True)
        with metrics_file.open("a", encoding="utf-8") as f:
            f.write(json.dumps(finite_or_null(figures), allow_nan=False, default=str) + "\n")
    if cfg.redis_url:
        try:
            with redis.Redis.from_url(cfg.redis_url, socket_timeout=5.0) as r:
                r.set(VersionKeys(cfg.redis_prefix).last_round, json.dumps(finite_or_null(figures), default=str))
        except (RedisError, OSError) as exc:
            logger.warning("could not write the round's figures to Redis: %s", exc)


def run_rounds(cfg: RetrainConfig, every_s: float, rounds: int, metrics_file: Path | None,
               on_round: Callable[[dict[str, Any]], None] | None = None,
               sleep: Callable[[float], None] = time.sleep, count_too_few: bool = True) -> list[dict[str, Any]]:
    """Run ``rounds`` retraining rounds (0: until interrupted), one every ``every_s`` seconds
    (measured start to start; a round longer than that is followed at once).

    With ``count_too_few`` False (``--every-records``: ``every_s`` is then the polling interval and
    ``cfg.min_records`` the round size), a try that found fewer than ``min_records`` new records
    is neither recorded nor counted: a round starts on a count of new records.

    A round whose experience log or Redis cannot be reached (:class:`UserError`) is logged and
    recorded with status ``error``; the next round tries again.
    """
    done: list[dict[str, Any]] = []
    index = 0
    while rounds == 0 or index < rounds:
        index += 1
        start = time.monotonic()
        try:
            figures = round_figures(index, run_retrain(cfg))
        except UserError as exc:
            logger.warning("retrain round %d failed: %s", index, exc)
            figures = {"round": index, "time": datetime.now(UTC).isoformat(), "status": "error", "error": str(exc)}
        if count_too_few or figures["status"] != "too_few":
            record_round(figures, metrics_file, cfg)
            done.append(figures)
            if on_round is not None:
                on_round(figures)
        else:
            index -= 1  # only a poll: not a round
        if rounds == 0 or index < rounds:
            sleep(max(0.0, every_s - (time.monotonic() - start)))
    return done
