"""Runtime settings of the routing server, read from ``ROUTER_*`` environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]


class Settings(BaseSettings):
    """Server configuration; every field can be set as ``ROUTER_<FIELD>`` (case-insensitive).

    Raises:
        pydantic.ValidationError: on construction, when a value is of the wrong type or out of
            range.
    """

    model_config = SettingsConfigDict(env_prefix="ROUTER_", extra="ignore", validate_default=True)

    checkpoint: Path = Field(
        Path("checkpoints"),
        description="A policy version directory, or a parent directory whose newest version is "
        "served (see training.checkpoint.resolve_checkpoint).",
    )
    redis_url: str | None = Field(
        None,
        description="Redis URL (redis://host:port/db) of the experience log; unset: SQLite.",
    )
    redis_prefix: str = Field(
        "agent-router",
        min_length=1,
        max_length=200,
        description="Prefix of every Redis key this server writes ('<prefix>:...').",
    )
    sqlite_path: Path = Field(
        Path("var/experience.sqlite3"),
        description="SQLite experience database, used when redis_url is unset.",
    )
    stream_maxlen: int = Field(
        1_000_000,
        ge=1,
        description="Approximate maximum entries kept per Redis stream (XADD MAXLEN ~).",
    )
    decision_ttl_s: int = Field(
        86400,
        ge=1,
        description="Seconds a decision waits for feedback before it is forgotten (404).",
    )
    max_prompt_chars: int = Field(
        32000, ge=1, description="Longest prompt accepted, in characters."
    )
    embed_cache_dir: Path | None = Field(
        None, description="Directory of the on-disk embedding cache; unset: no cache."
    )
    device: str = Field("cpu", min_length=1, description="Torch device of the embedding model.")
    torch_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="torch intra-op threads per server process. 1 suits serving: requests run "
        "concurrently in threads and processes, and more threads per forward pass collapse "
        "under CPU contention (hundreds of ms per prompt instead of ~15 ms).",
    )
    host: str = Field("127.0.0.1", min_length=1, description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    workers: int = Field(1, ge=1, le=256, description="uvicorn worker processes.")
    log_level: LogLevel = Field("info", description="uvicorn log level.")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the /admin endpoints; unset: they are open (a warning at start-up).",
    )
    retry_after_s: int = Field(
        1,
        ge=0,
        le=3600,
        description="Seconds sent in Retry-After when the experience store is unavailable.",
    )

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
