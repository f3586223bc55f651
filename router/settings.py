"""Runtime settings of the routing server, read from ``ROUTER_*`` environment variables."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientKey(BaseModel):
    """A client key of the proxy: its name (in metrics and logs), the SHA-256 of the key, and its budget.

    Attributes:
        name: shown in metrics and logs (never the key).
        sha256: 64 hex characters, the SHA-256 of the key's UTF-8 bytes.
        budget_usd_per_day: USD the key may spend per UTC day; None: no limit.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    sha256: str = Field(pattern=r"^[0-9a-fA-F]{64}$")
    budget_usd_per_day: float | None = Field(default=None, ge=0.0, allow_inf_nan=False)


LogLevel = Literal["critical", "error", "warning", "info", "debug", "trace"]
#: Settings that take ``auto`` or a whole number from 1 to this.
_AUTO_OR_AT_MOST = {"encode_batch": 4096, "encode_threads": 256}


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` (an address or ``localhost``) is a loopback address."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


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
        "served (see policy.checkpoint.resolve_checkpoint).",
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
    sqlite_decision_sync: Literal["full", "normal"] = Field(
        "normal",
        description="SQLite store: 'full' fsyncs each decision context before /v1/route answers; 'normal' "
        "writes it to the WAL at once (it survives a crash of the process) and leaves the fsync to the next "
        "feedback's commit, taking the fsync off the routing path. A decision lost to a power cut makes its "
        "feedback answer 404; feedback itself is always fsynced before its 202.",
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
    outbox_path: Path = Field(
        Path("var/outbox.sqlite3"),
        description="Durable local outbox (SQLite, fsynced) that keeps decisions and experience records "
        "while Redis is unreachable; drained to Redis in order when it is back.",
    )
    server_timing: bool = Field(
        False,
        description="Answer POST /v1/route and the proxy's calls with a Server-Timing header (W3C) giving "
        "the ms of each stage of the decision (embed, encode, state, policy, store, lease). Off by default: "
        "the time to embed tells a client whether another client sent the same prompt lately (the LRU cache). "
        "The access log carries the stages either way (stages_ms).",
    )
    store_prompts: bool = Field(
        False,
        description="Keep the prompt text in decision and experience records. Off: only its SHA-256 and "
        "its embedding (float16) are stored.",
    )
    inflight_ttl_s: float = Field(
        300.0,
        gt=0,
        le=86400 * 7,
        description="Seconds after which a request routed to an agent stops counting as in flight when "
        "no feedback released it (e.g. the client crashed).",
    )
    embed_cache_dir: Path | None = Field(
        None, description="Directory of the on-disk embedding cache; unset: no cache."
    )
    device: str = Field("cpu", min_length=1, description="Torch device of the embedding model.")
    encoder: Literal["torch", "onnx", "onnx-int8", "onnx-fp32", "static"] | None = Field(
        None,
        description="What runs the embedding model; unset: the policy's own (policy.json embedding.serving, the "
        "fastest encoder that kept at least 99% of its validation decisions when it was trained; static for a "
        "policy trained on static embeddings; else torch). torch (the model on torch; on the CPU a TorchScript "
        "trace of it, cached in trace_dir: env.traced_embedder); static (static embeddings distilled from the "
        "model into static_dir: env.static_embedder; only for a policy trained on them); onnx-int8 (ONNX Runtime: int8 "
        "weights in blocks of 16 and int8 compute on this CPU's instructions, exported once from the local "
        "model files into onnx_dir; a CPU without those instructions falls back to the export without quantisation); "
        "onnx-fp32 (the export without quantisation: torch's vectors up to float rounding); onnx (the faster "
        "of the two on this CPU, timed at start-up). The ONNX encoders run on the CPU with torch_threads "
        "threads and ignore device. See env.onnx_embedder.",
    )
    static_dir: Path = Field(
        Path("var/static"),
        description="Directory of the cached static embeddings, one per model, hash of its files and "
        "distillation settings (written atomically).",
    )
    onnx_dir: Path = Field(
        Path("var/onnx"),
        description="Directory of the cached ONNX exports, one per model, quantisation and "
        "hash of the model files (written atomically).",
    )
    trace_dir: Path = Field(
        Path("var/torchscript"),
        description="Directory of the cached TorchScript traces of the embedding model that ROUTER_ENCODER=torch "
        "runs on the CPU (one per model, hash of its files and torch version, written atomically; "
        "env.traced_embedder).",
    )
    policy_runtime: Literal["auto", "torch"] = Field(
        "auto",
        description="What runs the policy's decision. auto: ONNX Runtime, one call per decision, when the policy's "
        "ONNX export (cached under onnx_dir/heads) matches torch on random probes, else torch (the log says which "
        "and why); about 0.5 ms less per decision on a 2-core CPU (docs/serving.md). torch: always torch. See "
        "policy.onnx_head.",
    )
    plan_dir: Path = Field(
        Path("var/plans"),
        description="Directory of the start-up measurements (the encode pass size of ROUTER_ENCODE_BATCH=auto, the "
        "ONNX export of ROUTER_ENCODER=onnx), one file per encoder, model, CPU model and threads: a restart on "
        "the same machine reads them instead of timing again (router.encode_plan). Delete a file to measure again.",
    )
    torch_threads: int = Field(
        1,
        ge=1,
        le=256,
        description="Intra-op threads of each encode pass (torch, or ONNX Runtime). 1 suits "
        "serving: passes run side by side in encode_threads threads and in worker processes, and more "
        "threads per forward pass collapse under CPU contention (hundreds of ms per prompt instead of ~15 ms).",
    )
    gil_switch_interval_ms: float = Field(
        5.0,
        gt=0.0,
        le=100.0,
        description="Python's thread switch interval (sys.setswitchinterval) in the server, ms. The encoder "
        "thread releases the GIL for every tensor operation and must take it back from the event loop each "
        "time; a shorter interval makes the loop hand it over sooner under load.",
    )
    batch_window_ms: float = Field(
        2.0,
        ge=0.0,
        le=1000.0,
        description="Micro-batching: while every encode thread is busy, a pass short of its size waits until "
        "its oldest prompt has waited this long. A prompt that arrives while a thread is free is encoded at "
        "once, so a lone request waits for nothing.",
    )
    inline_encode_ms: float = Field(
        1.0,
        ge=0.0,
        le=100.0,
        description="An encoder whose one-prompt encode averages at most this many ms (measured while "
        "serving) is called in the event loop, with no queue and no thread hop, until that average is over "
        "twice this: static embeddings, not the transformer. The loop is blocked that long per new prompt. "
        "0: always a worker thread.",
    )
    max_batch: int = Field(64, ge=1, le=4096, description="Most prompts embedded in one encode call (caps "
                           "encode_batch).")
    encode_batch: int | Literal["auto"] = Field(
        "auto",
        description="Prompts per forward pass of the embedding model (one encode call of the micro-batcher, "
        "which groups waiting prompts of like length). auto: measured at start-up, the size of the lowest "
        "cost per prompt (router.encode_plan; on a small CPU often 1).",
    )
    encode_threads: int | Literal["auto"] = Field(
        "auto",
        description="Encode passes run at once in each server process, each in its own thread with "
        "torch_threads threads (prompts of concurrent requests are encoded side by side). auto: the CPU cores "
        "this process may use, divided by workers.",
    )
    lru_size: int = Field(
        10000, ge=0, description="Prompt embeddings kept in memory (LRU, keyed by SHA-256 of the text); 0: none."
    )
    max_body_bytes: int = Field(
        512 * 1024,
        ge=1024,
        description="Largest request body accepted, in bytes; larger ones get 413. The default fits a "
        "32,000-character prompt even when every character is JSON-escaped (up to 12 bytes each).",
    )
    log_format: Literal["json", "text"] = Field(
        "json", description="Format of the router's own log lines (logger 'router'): JSON objects or text."
    )
    host: str = Field("127.0.0.1", min_length=1, description="Interface uvicorn binds to.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port uvicorn listens on.")
    workers: int = Field(
        1, ge=1, le=256,
        description="uvicorn worker processes (one per core). More than 1 needs redis_url: the workers share the "
        "live load, agents down, cooldowns and the served version through Redis.")
    log_level: LogLevel = Field("info", description="uvicorn log level.")
    admin_token: SecretStr | None = Field(
        None,
        description="Bearer token of the /admin endpoints (send 'Authorization: Bearer <token>'); unset: "
        "they answer 403, unless admin_open.",
    )
    admin_open: bool = Field(
        False,
        description="With no admin_token, open the /admin endpoints to clients on this machine. Only on a "
        "loopback bind (host 127.0.0.1, ::1 or localhost): the server refuses to start otherwise.",
    )
    retry_after_s: int = Field(
        1,
        ge=0,
        le=3600,
        description="Seconds sent in Retry-After when the experience store is unavailable.",
    )
    cost_weight: float | None = Field(
        None,
        ge=0.0,
        allow_inf_nan=False,
        description="Default cost preference (USD^-1) of POST /v1/route for a policy trained for every trade-off "
        "(a request's cost_weight overrides it); unset: the policy's default. Ignored by policies trained at one "
        "cost weight.",
    )
    cooldown_s: float = Field(
        60.0,
        ge=0.0,
        le=86400.0,
        description="Seconds an agent whose feedback quality collapsed is left out of routing (all replicas with "
        "Redis); then it is on probation. 0: no cooldowns.",
    )
    cooldown_quality: float = Field(
        0.05, ge=0.0, le=1.0,
        description="A feedback quality at or below this is a failure (router.cooldown).",
    )
    cooldown_window: int = Field(
        200, ge=1, le=10_000,
        description="Recent feedbacks kept per agent: the run of failures and the record it is judged against.")
    cooldown_min_feedback: int = Field(
        10, ge=1, le=10_000, description="The shortest run of failures that cools an agent down.")
    cooldown_probe_feedback: int = Field(
        3, ge=1, le=10_000,
        description="After a cooldown, failures in a row that cool the agent down again (a success recovers it).")
    cooldown_false_alarm: float = Field(
        1e-4, gt=0.0, lt=1.0,
        description="An agent cools down when its run of failures would have at most this chance under its own "
        "record before the run: a weak but working agent is not cooled.")
    explore_temperature: float = Field(
        1.0,
        ge=1.0,
        le=100.0,
        description="With explore=true, the policy's distribution is flattened to pi^(1/T) before the floor's "
        "mixing: exploration goes mostly to the agents the policy finds nearly as good. 1: the policy itself.",
    )
    explore_floor: float = Field(
        0.02,
        ge=0.0,
        le=1.0,
        description="With explore=true on POST /v1/route, the least probability of each allowed agent: the "
        "policy is mixed with uniform (alpha = min(1, floor * allowed)) so logged data covers more than the "
        "greedy choice; the chosen agent's probability is logged as its propensity.",
    )
    upstreams_file: Path | None = Field(
        None,
        description="YAML or JSON file naming each agent's OpenAI-compatible endpoint (base_url, model, the name "
        "of the environment variable holding its API key) for POST /v1/chat/completions; unset: no proxy.",
    )
    upstream_connect_timeout_s: float = Field(5.0, gt=0, le=600, description="Seconds to connect to an upstream.")
    upstream_first_token_timeout_s: float = Field(
        30.0, gt=0, le=3600,
        description="Seconds an upstream may take to its response (non-streaming) or first streamed chunk, and "
        "between two chunks of a stream.")
    upstream_timeout_s: float = Field(
        120.0, gt=0, le=3600,
        description="Seconds one proxied request may take in all, its fallback attempt included (the deadline).")
    proxy_attempts: int = Field(
        2, ge=1, le=5,
        description="Agents a proxied request tries: the chosen one, then the next most probable allowed ones on a "
        "connection error, timeout, 5xx or 429.")
    proxy_explore: bool = Field(
        False,
        description="Proxied requests sample their agent (as explore=true on /v1/route) so that the logged calls "
        "cover more than the greedy choice; a request's own 'explore' field overrides it.")
    api_keys: list[ClientKey] = Field(
        default_factory=list,
        description="Client keys of /v1/chat/completions, as JSON: [{\"name\": ..., \"sha256\": <hex SHA-256 of the "
        "key>, \"budget_usd_per_day\": ...}] ('agent-router keys new' makes one). Only hashes are kept.",
    )
    proxy_open: bool = Field(
        False,
        description="With no api_keys, open /v1/chat/completions to clients on this machine. Only on a loopback "
        "bind: the server refuses to start otherwise.",
    )
    policy_poll_s: float = Field(
        2.0,
        gt=0,
        le=3600,
        description="Seconds between reads of the published policy version in Redis (besides its "
        "pub/sub messages), so a replica that missed a message still converges.",
    )

    @model_validator(mode="after")
    def _admin_open_on_loopback(self) -> Settings:
        if self.admin_open and not is_loopback(self.host):
            raise ValueError(f"admin_open needs a loopback host (127.0.0.1, ::1, localhost), not {self.host!r}; "
                             "set ROUTER_ADMIN_TOKEN instead")
        if self.proxy_open and not is_loopback(self.host):
            raise ValueError(f"proxy_open needs a loopback host (127.0.0.1, ::1, localhost), not {self.host!r}; "
                             "set ROUTER_API_KEYS instead")
        if self.workers > 1 and not self.redis_url:
            raise ValueError(f"workers={self.workers} needs redis_url: each worker process would keep its own live "
                             "load, agents down, cooldowns, key spending and hot swap; set ROUTER_REDIS_URL "
                             "(or serve with one worker)")
        names = [key.name for key in self.api_keys]
        if len(set(names)) != len(names):
            raise ValueError("api_keys: every key needs its own name")
        return self

    @field_validator("encode_batch", "encode_threads")
    @classmethod
    def _auto_or_range(cls, value: int | str, info: ValidationInfo) -> int | str:
        most = _AUTO_OR_AT_MOST[info.field_name]
        if isinstance(value, int) and not 1 <= value <= most:
            raise ValueError(f"must be auto or a whole number from 1 to {most}")
        return value

    def resolved_encode_threads(self) -> int:
        """``encode_threads``, with auto made the cores this process may use over ``workers`` (at least 1)."""
        if self.encode_threads != "auto":
            return int(self.encode_threads)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, cores // self.workers)

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower_log_level(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value
