"""Micro-batched prompt embedding with an in-memory LRU cache in front.

Concurrent ``POST /v1/route`` requests each need one SBERT embedding; encoding them together is
several times cheaper per prompt than one by one. :class:`EmbedBatcher` queues the prompts of
concurrent requests and encodes them with one ``Embedder.encode`` call in a worker thread:

* A prompt that arrives while no batch is being encoded starts a batch at once (with whatever
  arrived in the same event-loop turn), so a lone request waits for nothing: at concurrency 1 the
  added latency is a thread hop.
* Prompts that arrive while a batch is being encoded wait for it; when it ends, the next batch
  starts with all of them (at most ``max_batch``). If fewer than ``max_batch`` wait, it first
  gathers more until the oldest waiting prompt has waited ``window_ms`` in all. Under load the
  batches grow by themselves.
* One batch runs at a time (one worker thread): with ``ROUTER_TORCH_THREADS=1`` that leaves the
  other cores to the event loop and to other worker processes.
* An LRU cache (``lru_size`` entries, keyed by the model and the SHA-256 of the text) answers a
  repeated prompt without encoding it; concurrent requests with the same prompt share one encode.

The vectors returned are read-only ``[E]`` float32 arrays, identical (up to float rounding of the
padded batch, < 1e-5) to ``embedder.encode([prompt])[0]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class SupportsEncode(Protocol):
    """What the batcher needs of an embedder (``env.embedder.Embedder``)."""

    model_id: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


#: ``on_batch(size, seconds)``: called (in the event loop) after each encode call.
BatchHook = Callable[[int, float], None]
#: ``on_lookup(hit)``: called for every prompt looked up in the LRU cache.
LookupHook = Callable[[bool], None]


@dataclass
class _Job:
    embedder: SupportsEncode
    key: tuple[str, bytes]
    text: str
    future: asyncio.Future[np.ndarray]
    arrived: float = field(default_factory=time.perf_counter)


class EmbedBatcher:
    """Micro-batching embedder shared by the requests of one app.

    Args:
        window_ms: after a batch ends with fewer than ``max_batch`` prompts waiting, gather more
            until the oldest waiting one has waited this long. 0: start at once.
        max_batch: most prompts per encode call.
        lru_size: prompts whose embeddings are kept in memory; 0 disables the cache.
        on_batch: metrics hook, ``on_batch(batch_size, encode_seconds)``.
        on_lookup: metrics hook, ``on_lookup(hit)``.

    Attributes:
        batches: encode calls made.
        encoded: prompts encoded (cache misses, after merging duplicates).
        hits: prompts answered from the LRU cache (or from an identical prompt in flight).
    """

    def __init__(
        self,
        window_ms: float = 2.0,
        max_batch: int = 64,
        lru_size: int = 10000,
        on_batch: BatchHook | None = None,
        on_lookup: LookupHook | None = None,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if window_ms < 0 or lru_size < 0:
            raise ValueError("window_ms and lru_size must not be negative")
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.lru_size = lru_size
        self.on_batch = on_batch
        self.on_lookup = on_lookup
        self._lru: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._waiting: list[_Job] = []
        self._by_key: dict[tuple[str, bytes], asyncio.Future[np.ndarray]] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._closed = False
        self.batches = 0
        self.encoded = 0
        self.hits = 0

    # --- public API -----------------------------------------------------------------------

    async def embed(self, embedder: SupportsEncode, text: str) -> np.ndarray:
        """The unit-norm embedding ``[E]`` (float32, read-only) of ``text`` by ``embedder``.

        Raises:
            RuntimeError: the batcher is closed.
            Exception: whatever ``embedder.encode`` raised for the batch holding ``text``.
        """
        if self._closed:
            raise RuntimeError("the embedding batcher is closed")
        key = (embedder.model_id, hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest())
        cached = self._lru.get(key)
        if cached is not None:
            self._lru.move_to_end(key)
            self._count_lookup(True)
            return cached
        shared = self._by_key.get(key)
        if shared is not None:  # the same prompt is already waiting or being encoded
            self._count_lookup(True)
            return await asyncio.shield(shared)
        self._count_lookup(False)
        self._ensure_driver()
        assert self._wake is not None and self._full is not None
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._by_key[key] = future
        self._waiting.append(_Job(embedder, key, text, future))
        self._wake.set()
        if len(self._waiting) >= self.max_batch:
            self._full.set()
        return await asyncio.shield(future)

    def cache_info(self) -> dict[str, int]:
        """``{"size", "capacity", "hits", "encoded", "batches", "waiting"}``."""
        return {"size": len(self._lru), "capacity": self.lru_size, "hits": self.hits,
                "encoded": self.encoded, "batches": self.batches, "waiting": len(self._waiting)}

    def clear_cache(self) -> None:
        """Forget every cached embedding."""
        self._lru.clear()

    async def aclose(self) -> None:
        """Stop the driver, fail the prompts still waiting, and shut the worker thread down."""
        self._closed = True
        if self._driver is not None:
            self._driver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._driver
            self._driver = None
        for job in self._waiting:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the embedding batcher is closed"))
        self._waiting.clear()
        self._by_key.clear()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # --- internals ------------------------------------------------------------------------

    def _count_lookup(self, hit: bool) -> None:
        if hit:
            self.hits += 1
        if self.on_lookup is not None:
            self.on_lookup(hit)

    def _ensure_driver(self) -> None:
        if self._driver is None or self._driver.done():
            self._wake = asyncio.Event()
            self._full = asyncio.Event()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embed-batch")
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="embed-batcher")

    async def _drive(self) -> None:
        assert self._wake is not None and self._full is not None
        just_ran = False
        while True:
            if not self._waiting:
                self._wake.clear()
                # Wakes one event-loop turn after the first arrival: the prompts of requests that
                # were ready in the same turn have joined by then.
                await self._wake.wait()
                just_ran = False
            elif just_ran and self.window_s > 0 and len(self._waiting) < self.max_batch:
                # A batch just ended and more prompts may be on their way: gather them until the
                # oldest waiting prompt has waited window_ms in all (prompts that already waited
                # through the last batch do not wait again).
                remaining = self._waiting[0].arrived + self.window_s - time.perf_counter()
                if remaining > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(remaining):
                            await self._full.wait()
            batch = self._waiting[: self.max_batch]
            del self._waiting[: self.max_batch]
            if len(self._waiting) < self.max_batch:
                self._full.clear()
            await self._run(batch)
            just_ran = True

    async def _run(self, batch: list[_Job]) -> None:
        groups: dict[int, list[_Job]] = {}
        for job in batch:
            groups.setdefault(id(job.embedder), []).append(job)
        loop = asyncio.get_running_loop()
        for jobs in groups.values():
            texts = [job.text for job in jobs]
            started = time.perf_counter()
            try:
                vectors = await loop.run_in_executor(self._executor, _encode, jobs[0].embedder, texts)
            except asyncio.CancelledError:
                for job in jobs:
                    self._fail(job, RuntimeError("the embedding batcher is closed"))
                raise
            except Exception as exc:
                for job in jobs:
                    self._fail(job, exc)
                continue
            seconds = time.perf_counter() - started
            self.batches += 1
            self.encoded += len(jobs)
            if self.on_batch is not None:
                try:
                    self.on_batch(len(jobs), seconds)
                except Exception:  # a metrics hook must not fail the requests
                    logger.exception("embed batch hook failed")
            for job, vector in zip(jobs, vectors, strict=True):
                self._remember(job.key, vector)
                self._by_key.pop(job.key, None)
                if not job.future.done():
                    job.future.set_result(vector)

    def _fail(self, job: _Job, exc: BaseException) -> None:
        self._by_key.pop(job.key, None)
        if not job.future.done():
            job.future.set_exception(exc)
            job.future.exception()  # retrieved: no "exception was never retrieved" if nobody waits

    def _remember(self, key: tuple[str, bytes], vector: np.ndarray) -> None:
        if self.lru_size == 0:
            return
        self._lru[key] = vector
        self._lru.move_to_end(key)
        while len(self._lru) > self.lru_size:
            self._lru.popitem(last=False)


def _encode(embedder: Any, texts: list[str]) -> list[np.ndarray]:
    """``embedder.encode(texts)`` as read-only ``[E]`` float32 rows (runs in the worker thread)."""
    matrix = np.ascontiguousarray(embedder.encode(texts), dtype=np.float32)
    if matrix.shape[0] != len(texts):
        raise RuntimeError(f"the embedder returned {matrix.shape[0]} vectors for {len(texts)} texts")
    rows = []
    for row in matrix:
        row = row.copy()
        row.flags.writeable = False
        rows.append(row)
    return rows
