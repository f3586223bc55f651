"""Micro-batched prompt embedding with an in-memory LRU cache in front.

Concurrent ``POST /v1/route`` requests each need one SBERT embedding. :class:`EmbedBatcher` queues
their prompts and feeds the encoder in *passes*: one ``Embedder.encode`` call of at most
``pass size`` prompts (the embedder's ``batch_size``, which ``ROUTER_ENCODE_BATCH=auto`` sets to the
measured cheapest size per prompt, :mod:`router.encode_plan`; never more than ``max_batch``), each
in one of ``threads`` worker threads:

* A prompt that arrives while a worker is free starts a pass at once (with whatever arrived in the
  same event-loop turn), so a lone request waits for nothing: at concurrency 1 the added latency is
  a thread hop.
* Each pass answers its own prompts as soon as it ends, and the next pass is queued before the
  running one ends (one more than there are threads), so the encoder never waits for the event
  loop and a request never waits for prompts that came after it.
* A pass is the oldest waiting prompt and the waiting prompts nearest to it in length (less
  padding). While every worker is busy, a pass that would be short of its size waits until its
  oldest prompt has waited ``window_ms`` or the pass is full: under load the passes fill by
  themselves.
* An LRU cache (``lru_size`` entries, keyed by the model and the SHA-256 of the text) answers a
  repeated prompt without encoding it; concurrent requests with the same prompt share one encode.
* An encoder cheaper than a thread hop (static embeddings: a lookup and a mean per token) is called
  in the event loop itself, with no queue and no worker thread, once the batcher has measured it:
  when the typical encode of one prompt (an exponential moving average of the CPU time of the last
  few one-prompt encodes, in whichever thread ran them) takes at most ``inline_ms``; it goes back to
  the threads once that average is over twice ``inline_ms``. CPU time, not wall time: under load a
  worker's wall time is mostly waiting for the GIL, and so is an inline encode's when a worker takes
  the GIL from the loop in the middle of it. (An encoder that waited rather than computed would be
  misjudged; the shipped ones all compute in the calling thread.) The loop is then blocked for about
  that long per prompt, as it is by the policy's own decision; a dearer encoder keeps the threads.
  The first encodes of an embedder always go to a worker thread (nothing is measured yet), and
  inline encodes that turn out slow move the average back over the line.

The vectors returned are read-only ``[E]`` float32 arrays, identical (up to float rounding of the
padded pass, < 1e-5) to ``embedder.encode([prompt])[0]``. A caller that passes a ``timings`` dict
learns how long the encode call of its prompt's pass took inside the worker thread (``encode``,
seconds), apart from the wait for a worker and the thread hops.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

logger = logging.getLogger(__name__)


class SupportsEncode(Protocol):
    """What the batcher needs of an embedder (``env.embedder.Embedder``); an int ``batch_size``
    attribute, where it has one, is its pass size."""

    model_id: str

    def encode(self, texts: list[str]) -> np.ndarray: ...


#: Weight of the newest one-prompt encode in an embedder's moving average (about the last 4 count).
_AVERAGE_WEIGHT = 0.25
#: An embedder in the loop goes back to the threads once its average is over this many times
#: ``inline_ms`` (hysteresis: an average near the line does not move it back and forth).
_LEAVE_FACTOR = 2.0


@dataclass
class _Measured:
    average_s: float
    inline: bool = False

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
    encode_s: float | None = None


class EmbedBatcher:
    """Micro-batching embedder shared by the requests of one app.

    Args:
        window_ms: while every worker is busy, a pass short of its size waits until its oldest
            prompt has waited this long. 0: start at once.
        max_batch: most prompts per encode call (the pass size is the embedder's ``batch_size``,
            capped by this).
        lru_size: prompts whose embeddings are kept in memory; 0 disables the cache.
        threads: encode calls running at once, each in its own worker thread (the embedder must
            allow concurrent ``encode`` calls when more than 1).
        on_batch: metrics hook, ``on_batch(pass_size, encode_seconds)``.
        on_lookup: metrics hook, ``on_lookup(hit)``.
        inline_ms: an embedder whose one-prompt encode averages at most this many ms is called in the
            event loop (see the module docstring). 0: never.

    Attributes:
        batches: encode calls made.
        encoded: prompts encoded (cache misses, after merging duplicates).
        hits: prompts answered from the LRU cache (or from an identical prompt in flight).
        inlined: prompts encoded in the event loop (counted in ``encoded`` and ``batches`` too).

    Raises:
        ValueError: ``max_batch`` or ``threads`` below 1, or a negative ``window_ms``, ``lru_size`` or
            ``inline_ms``.
    """

    def __init__(
        self,
        window_ms: float = 2.0,
        max_batch: int = 64,
        lru_size: int = 10000,
        threads: int = 1,
        on_batch: BatchHook | None = None,
        on_lookup: LookupHook | None = None,
        inline_ms: float = 0.0,
    ) -> None:
        if max_batch < 1 or threads < 1:
            raise ValueError("max_batch and threads must be at least 1")
        if window_ms < 0 or lru_size < 0 or inline_ms < 0:
            raise ValueError("window_ms, lru_size and inline_ms must not be negative")
        self.window_s = window_ms / 1000.0
        self.max_batch = max_batch
        self.lru_size = lru_size
        self.threads = threads
        self.on_batch = on_batch
        self.on_lookup = on_lookup
        self.inline_s = inline_ms / 1000.0
        #: per embedder: the moving average of its one-prompt encode, and whether it encodes in the loop
        self._measured: weakref.WeakKeyDictionary[Any, _Measured] = weakref.WeakKeyDictionary()
        self._lru: OrderedDict[tuple[str, bytes], np.ndarray] = OrderedDict()
        self._waiting: list[_Job] = []
        self._by_key: dict[tuple[str, bytes], asyncio.Future[np.ndarray]] = {}
        self._passes: set[asyncio.Task[None]] = set()
        self._executor: ThreadPoolExecutor | None = None
        self._driver: asyncio.Task[None] | None = None
        self._wake: asyncio.Event | None = None
        self._closed = False
        self.batches = 0
        self.encoded = 0
        self.hits = 0
        self.inlined = 0

    # --- public API -----------------------------------------------------------------------

    async def embed(self, embedder: SupportsEncode, text: str, timings: dict[str, float] | None = None) -> np.ndarray:
        """The unit-norm embedding ``[E]`` (float32, read-only) of ``text`` by ``embedder``.

        Args:
            timings: where given, ``timings["encode"]`` is set to the seconds the encode call of the
                pass holding ``text`` took in its worker thread (left unset when the prompt was cached
                or shared another request's encode).

        Raises:
            RuntimeError: the batcher is closed.
            Exception: whatever ``embedder.encode`` raised for the pass holding ``text``.
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
        if self._inline(embedder):
            return self._encode_inline(embedder, key, text, timings)
        self._ensure_driver()
        assert self._wake is not None
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._by_key[key] = future
        job = _Job(embedder, key, text, future)
        self._waiting.append(job)
        self._wake.set()
        vector = await asyncio.shield(future)
        if timings is not None and job.encode_s is not None:
            timings["encode"] = job.encode_s
        return vector

    def cache_info(self) -> dict[str, int]:
        """``{"size", "capacity", "hits", "encoded", "batches", "inlined", "waiting"}``."""
        return {"size": len(self._lru), "capacity": self.lru_size, "hits": self.hits, "encoded": self.encoded,
                "batches": self.batches, "inlined": self.inlined, "waiting": len(self._waiting)}

    def clear_cache(self) -> None:
        """Forget every cached embedding."""
        self._lru.clear()

    async def aclose(self) -> None:
        """Stop the driver and the passes, fail the prompts still waiting, and shut the worker
        threads down."""
        self._closed = True
        tasks = [t for t in (self._driver, *self._passes) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._driver = None
        for job in self._waiting:
            self._fail(job, RuntimeError("the embedding batcher is closed"))
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
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="embed-batch")
            self._driver = asyncio.get_running_loop().create_task(self._drive(), name="embed-batcher")

    def _inline(self, embedder: SupportsEncode) -> bool:
        measured = self._measured.get(embedder)
        return measured is not None and measured.inline

    def _note_single(self, embedder: SupportsEncode, seconds: float) -> None:
        """Fold a one-prompt encode's CPU time, ``seconds``, into ``embedder``'s moving average; move it
        into the loop at most ``inline_ms``, back to the threads over :data:`_LEAVE_FACTOR` times it."""
        measured = self._measured.get(embedder)
        if measured is None:
            measured = self._measured[embedder] = _Measured(seconds)
        else:
            measured.average_s += _AVERAGE_WEIGHT * (seconds - measured.average_s)
        inline = (measured.average_s <= self.inline_s * _LEAVE_FACTOR if measured.inline
                  else measured.average_s <= self.inline_s)
        if inline != measured.inline:
            measured.inline = inline
            logger.info("%s encodes %s: one prompt takes %.2f ms of CPU on average (in the loop from %.2f ms, "
                        "back to the threads over %.2f ms)", getattr(embedder, "encoder", embedder.model_id),
                        "in the event loop" if inline else "in worker threads", measured.average_s * 1000.0,
                        self.inline_s * 1000.0, self.inline_s * _LEAVE_FACTOR * 1000.0)

    def _encode_inline(self, embedder: SupportsEncode, key: tuple[str, bytes], text: str,
                       timings: dict[str, float] | None) -> np.ndarray:
        """Encode ``text`` here, in the event loop (the embedder is measured cheap)."""
        vectors, encode_s, cpu_s = _encode(embedder, [text])
        self._note_single(embedder, cpu_s)
        self.batches += 1
        self.encoded += 1
        self.inlined += 1
        self._observe_batch(1, encode_s)
        self._remember(key, vectors[0])
        if timings is not None:
            timings["encode"] = encode_s
        return vectors[0]

    def _observe_batch(self, size: int, seconds: float) -> None:
        if self.on_batch is not None:
            try:
                self.on_batch(size, seconds)
            except Exception:  # a metrics hook must not fail the requests
                logger.exception("embed batch hook failed")

    def _pass_size(self, embedder: SupportsEncode) -> int:
        size = getattr(embedder, "batch_size", None)
        return min(self.max_batch, size) if isinstance(size, int) and size >= 1 else self.max_batch

    async def _drive(self) -> None:
        assert self._wake is not None
        loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            wait_s: float | None = None
            # one pass queued ahead of the running ones: a worker that ends starts the next at once
            while self._waiting and len(self._passes) <= self.threads:
                jobs = self._take_pass()
                if isinstance(jobs, float):
                    wait_s = jobs
                    break
                task = loop.create_task(self._run(jobs), name="embed-pass")
                self._passes.add(task)
                task.add_done_callback(self._pass_done)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await self._wake.wait()

    def _take_pass(self) -> list[_Job] | float:
        """The next pass (the oldest waiting prompt and those of its embedder nearest to it in length),
        taken off the queue; or, while every worker is busy and the pass would be short of its size,
        the seconds until its oldest prompt has waited ``window_ms``."""
        oldest = self._waiting[0]
        size = self._pass_size(oldest.embedder)
        if size == 1:
            return [self._waiting.pop(0)]
        same = [job for job in self._waiting if job.embedder is oldest.embedder]
        if len(same) < size and len(self._passes) >= self.threads:
            remaining = oldest.arrived + self.window_s - time.perf_counter()
            if remaining > 0:
                return remaining
        chosen = [oldest, *heapq.nsmallest(size - 1, same[1:], key=lambda job: abs(len(job.text) - len(oldest.text)))]
        taken = {id(job) for job in chosen}
        self._waiting = [job for job in self._waiting if id(job) not in taken]
        return chosen

    def _pass_done(self, task: asyncio.Task[None]) -> None:
        self._passes.discard(task)
        if self._wake is not None:
            self._wake.set()

    async def _run(self, jobs: list[_Job]) -> None:
        texts = [job.text for job in jobs]
        started = time.perf_counter()
        try:
            vectors, encode_s, cpu_s = await asyncio.get_running_loop().run_in_executor(self._executor, _encode,
                                                                                 jobs[0].embedder, texts)
        except asyncio.CancelledError:
            for job in jobs:
                self._fail(job, RuntimeError("the embedding batcher is closed"))
            raise
        except Exception as exc:
            for job in jobs:
                self._fail(job, exc)
            return
        seconds = time.perf_counter() - started
        self.batches += 1
        self.encoded += len(jobs)
        if len(jobs) == 1 and self.inline_s > 0:
            self._note_single(jobs[0].embedder, cpu_s)
        self._observe_batch(len(jobs), seconds)
        for job, vector in zip(jobs, vectors, strict=True):
            job.encode_s = encode_s
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


def _encode(embedder: Any, texts: list[str]) -> tuple[list[np.ndarray], float, float]:
    """``embedder.encode(texts)`` as read-only ``[E]`` float32 rows, the seconds the call took, and the
    CPU seconds of the calling thread in it (without waits for the GIL: what the call would block
    the event loop for). Runs in a worker thread, or in the loop for an inline encode."""
    started, cpu = time.perf_counter(), time.thread_time()
    matrix = np.ascontiguousarray(embedder.encode(texts), dtype=np.float32)
    seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
    if matrix.shape[0] != len(texts):
        raise RuntimeError(f"the embedder returned {matrix.shape[0]} vectors for {len(texts)} texts")
    rows = []
    for row in matrix:
        row = row.copy()
        row.flags.writeable = False
        rows.append(row)
    return rows, seconds, cpu
