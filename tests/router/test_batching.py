"""Micro-batched embedding (router.batcher): fewer encode calls, identical vectors, the LRU cache."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from env.embedder import Embedder
from router.batcher import EmbedBatcher

PROMPTS = [f"Question {i}: how do I {verb} a {thing}?" for i, (verb, thing) in enumerate(
    (v, t) for v in ("sort", "parse", "translate", "summarise") for t in ("list", "file", "poem", "contract"))]


@pytest.fixture(scope="module")
def embedder() -> Embedder:
    """The real all-MiniLM-L6-v2 embedder (loaded once)."""
    emb = Embedder(device="cpu")
    emb.encode(["warm-up"])
    return emb


class FakeEmbedder:
    """Deterministic 4-dim vectors; records every batch and the thread that encoded it; optionally
    slow (sleeping ``delay_s``, or computing for ``busy_s`` of CPU time) or failing."""

    model_id = "fake"

    def __init__(self, delay_s: float = 0.0, fail: bool = False, busy_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.busy_s = busy_s
        self.fail = fail
        self.batches: list[list[str]] = []
        self.threads: list[str] = []
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(list(texts))
            self.threads.append(threading.current_thread().name)
        if self.delay_s:
            time.sleep(self.delay_s)
        until = time.thread_time() + self.busy_s
        while time.thread_time() < until:
            pass
        if self.fail:
            raise RuntimeError("encoder broke")
        return np.array([[len(t), t.count("a"), t.count("e"), 1.0] for t in texts], dtype=np.float32)


async def embed_all(batcher: EmbedBatcher, embedder, prompts: list[str]) -> list[np.ndarray]:
    try:
        return await asyncio.gather(*(batcher.embed(embedder, p) for p in prompts))
    finally:
        await batcher.aclose()


def test_concurrent_prompts_are_encoded_in_fewer_calls_with_identical_results(embedder):
    sizes: list[int] = []
    batcher = EmbedBatcher(window_ms=2.0, max_batch=64, on_batch=lambda n, s: sizes.append(n))
    before = embedder.encode_calls
    vectors = asyncio.run(embed_all(batcher, embedder, PROMPTS))
    calls = embedder.encode_calls - before
    assert 1 <= calls < len(PROMPTS)
    assert sum(sizes) == len(PROMPTS) and len(sizes) == calls and max(sizes) > 1
    for prompt, vector in zip(PROMPTS, vectors, strict=True):
        alone = embedder.encode([prompt])[0]
        assert vector.shape == alone.shape == (384,)
        np.testing.assert_allclose(vector, alone, atol=1e-5, rtol=0)
        assert not vector.flags.writeable


def test_repeated_prompt_is_served_from_the_lru_without_encoding(embedder):
    lookups: list[bool] = []

    async def scenario() -> tuple[np.ndarray, np.ndarray, int]:
        batcher = EmbedBatcher(lru_size=10, on_lookup=lookups.append)
        try:
            first = await batcher.embed(embedder, "What is the capital of Peru?")
            calls = embedder.encode_calls
            again = await batcher.embed(embedder, "What is the capital of Peru?")
            return first, again, embedder.encode_calls - calls
        finally:
            await batcher.aclose()

    first, again, extra_calls = asyncio.run(scenario())
    assert extra_calls == 0
    assert lookups == [False, True]
    np.testing.assert_array_equal(first, again)


def test_identical_concurrent_prompts_share_one_encode():
    fake = FakeEmbedder(delay_s=0.01)
    vectors = asyncio.run(embed_all(EmbedBatcher(lru_size=0), fake, ["same"] * 10 + ["other"]))
    assert sorted(t for batch in fake.batches for t in batch) == ["other", "same"]
    assert all(np.array_equal(v, vectors[0]) for v in vectors[:10])


def test_max_batch_caps_each_encode_call():
    fake = FakeEmbedder(delay_s=0.005)
    prompts = [f"p{i}" for i in range(20)]
    vectors = asyncio.run(embed_all(EmbedBatcher(max_batch=8, window_ms=1.0), fake, prompts))
    assert [len(b) for b in fake.batches] == [8, 8, 4]
    assert [float(v[0]) for v in vectors] == [float(len(p)) for p in prompts]


def test_lone_requests_do_not_wait_for_the_window():
    """A prompt arriving while nothing is encoded starts at once, even with a long window."""
    fake = FakeEmbedder()

    async def scenario() -> list[float]:
        batcher = EmbedBatcher(window_ms=1000.0)
        took = []
        try:
            for i in range(5):
                start = time.perf_counter()
                await batcher.embed(fake, f"lone {i}")
                took.append(time.perf_counter() - start)
        finally:
            await batcher.aclose()
        return took

    took = asyncio.run(scenario())
    assert max(took) < 0.5, took  # far below the 1 s window
    assert [len(b) for b in fake.batches] == [1] * 5


def test_prompts_waiting_behind_a_batch_go_together():
    fake = FakeEmbedder(delay_s=0.05)

    async def scenario() -> None:
        batcher = EmbedBatcher(window_ms=0.0)
        try:
            first = asyncio.ensure_future(batcher.embed(fake, "first"))
            await asyncio.sleep(0.01)  # "first" is being encoded now
            await asyncio.gather(first, *(batcher.embed(fake, f"later {i}") for i in range(6)))
        finally:
            await batcher.aclose()

    asyncio.run(scenario())
    assert [len(b) for b in fake.batches] == [1, 6]


def test_lru_evicts_the_least_recently_used():
    fake = FakeEmbedder()

    async def scenario() -> None:
        batcher = EmbedBatcher(lru_size=2)
        try:
            for text in ("a", "b", "a", "c", "a", "b"):
                await batcher.embed(fake, text)
            assert batcher.cache_info()["size"] == 2
        finally:
            await batcher.aclose()

    asyncio.run(scenario())
    # "a" stays (recently used), "b" was evicted by "c" and is encoded again
    assert [b[0] for b in fake.batches] == ["a", "b", "c", "b"]


def test_an_encoder_error_fails_its_batch_only():
    broken = FakeEmbedder(fail=True)
    fine = FakeEmbedder()

    async def scenario() -> np.ndarray:
        batcher = EmbedBatcher()
        try:
            results = await asyncio.gather(*(batcher.embed(broken, f"x{i}") for i in range(3)),
                                           return_exceptions=True)
            assert all(isinstance(r, RuntimeError) and "encoder broke" in str(r) for r in results)
            return await batcher.embed(fine, "after the failure")
        finally:
            await batcher.aclose()

    assert asyncio.run(scenario()).shape == (4,)


def test_closed_batcher_refuses():
    async def scenario() -> None:
        batcher = EmbedBatcher()
        await batcher.aclose()
        with pytest.raises(RuntimeError, match="closed"):
            await batcher.embed(FakeEmbedder(), "x")

    asyncio.run(scenario())


class PassEmbedder(FakeEmbedder):
    """A fake with a pass size (``batch_size``) that records the most calls running at once."""

    def __init__(self, batch_size: int, delay_s: float) -> None:
        super().__init__(delay_s=delay_s)
        self.batch_size = batch_size
        self.running = 0
        self.most_at_once = 0

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            return super().encode(texts)
        finally:
            with self.lock:
                self.running -= 1


def test_each_pass_answers_its_prompts_when_it_ends():
    """Prompts queued together are answered pass by pass, not when the last pass ends."""
    fake = PassEmbedder(batch_size=1, delay_s=0.05)

    async def scenario() -> list[float]:
        batcher = EmbedBatcher(window_ms=0.0)
        start = time.perf_counter()
        done: list[float] = []

        async def one(i: int) -> None:
            await batcher.embed(fake, f"prompt {i}")
            done.append(time.perf_counter() - start)

        try:
            await asyncio.gather(*(one(i) for i in range(5)))
        finally:
            await batcher.aclose()
        return done

    done = asyncio.run(scenario())
    assert [len(b) for b in fake.batches] == [1] * 5
    assert done[0] < 0.15 < done[-1], done  # the first answered after ~1 pass, the last after ~5
    assert fake.most_at_once == 1


def test_passes_take_the_pass_size_and_group_prompts_of_like_length():
    fake = PassEmbedder(batch_size=2, delay_s=0.05)
    short, long_ = ["a" * 5, "c" * 6], ["b" * 50, "d" * 49]

    async def scenario() -> None:
        batcher = EmbedBatcher(window_ms=0.0, max_batch=64)
        try:
            first = asyncio.ensure_future(batcher.embed(fake, "first"))
            await asyncio.sleep(0.01)  # "first" is being encoded: the rest wait together
            await asyncio.gather(first, *(batcher.embed(fake, t) for t in (short[0], long_[0], short[1], long_[1])))
        finally:
            await batcher.aclose()

    asyncio.run(scenario())
    assert fake.batches == [["first"], short, long_]


def test_threads_run_passes_at_once():
    fake = PassEmbedder(batch_size=1, delay_s=0.05)

    async def scenario() -> float:
        batcher = EmbedBatcher(window_ms=0.0, threads=2)
        start = time.perf_counter()
        try:
            await asyncio.gather(*(batcher.embed(fake, f"p{i}") for i in range(6)))
        finally:
            await batcher.aclose()
        return time.perf_counter() - start

    took = asyncio.run(scenario())
    assert fake.most_at_once == 2
    assert took < 0.25, took  # 6 passes of 50 ms on 2 threads: ~150 ms, not 300


def test_bad_batcher_arguments_are_refused():
    with pytest.raises(ValueError, match="at least 1"):
        EmbedBatcher(threads=0)
    with pytest.raises(ValueError, match="negative"):
        EmbedBatcher(window_ms=-1)


def embed_one_by_one(batcher: EmbedBatcher, embedder, prompts: list[str], busy_s: float | None = None,
                     then: Sequence[str] = ()) -> list[np.ndarray]:
    """Embed ``prompts`` one after the other; with ``busy_s``, the fake encoder then computes that long
    for each of the prompts ``then``; close the batcher."""
    async def scenario() -> list[np.ndarray]:
        try:
            vectors = [await batcher.embed(embedder, p) for p in prompts]
            if busy_s is not None:
                embedder.busy_s = busy_s
            return vectors + [await batcher.embed(embedder, p) for p in then]
        finally:
            await batcher.aclose()

    return asyncio.run(scenario())


def test_a_cheap_encoder_is_called_in_the_event_loop_once_measured():
    """The first prompt goes to a worker thread (nothing measured); then a one-prompt encode far under
    inline_ms runs in the loop's own thread, with the same vectors and the same accounting."""
    fake = FakeEmbedder()
    sizes: list[int] = []
    batcher = EmbedBatcher(inline_ms=50.0, on_batch=lambda n, s: sizes.append(n))
    prompts = [f"prompt {i}" for i in range(6)]
    timings: list[dict[str, float]] = []

    async def scenario() -> list[np.ndarray]:
        out = []
        try:
            for p in prompts:
                timings.append({})
                out.append(await batcher.embed(fake, p, timings[-1]))
        finally:
            await batcher.aclose()
        return out

    vectors = asyncio.run(scenario())
    loop_thread = threading.current_thread().name  # asyncio.run runs the loop in this thread
    assert fake.threads[0].startswith("embed-batch")
    assert fake.threads[1:] == [loop_thread] * 5
    assert [float(v[0]) for v in vectors] == [float(len(p)) for p in prompts]
    assert all(not v.flags.writeable for v in vectors)
    assert all("encode" in t for t in timings)
    assert batcher.cache_info() == {"size": 6, "capacity": 10000, "hits": 0, "encoded": 6, "batches": 6,
                                    "inlined": 5, "waiting": 0}
    assert sizes == [1] * 6


def test_an_encoder_dearer_than_inline_ms_keeps_the_threads():
    fake = FakeEmbedder(busy_s=0.01)
    batcher = EmbedBatcher(inline_ms=2.0)
    embed_one_by_one(batcher, fake, [f"slow {i}" for i in range(4)])
    assert all(name.startswith("embed-batch") for name in fake.threads), fake.threads
    assert batcher.inlined == 0


def test_inline_ms_zero_never_calls_the_encoder_in_the_loop():
    fake = FakeEmbedder()
    batcher = EmbedBatcher(inline_ms=0.0)
    embed_one_by_one(batcher, fake, [f"p {i}" for i in range(4)])
    assert all(name.startswith("embed-batch") for name in fake.threads), fake.threads


def test_an_inline_encode_that_turns_slow_hands_the_encoder_back_to_the_threads():
    fake = FakeEmbedder()
    # the encoder slows down: one inline encode of 50 ms
    embed_one_by_one(EmbedBatcher(inline_ms=5.0), fake, [f"fast {i}" for i in range(3)], busy_s=0.05,
                     then=["slow 0", "slow 1"])
    loop_thread = threading.current_thread().name
    assert fake.threads[1:4] == [loop_thread] * 3  # "fast 1", "fast 2", then "slow 0" still inline
    assert fake.threads[4].startswith("embed-batch")  # the average is now over 5 ms


def test_an_encode_is_measured_by_its_cpu_time_not_its_wall_time():
    """Under load a worker's wall time is mostly waiting for the GIL; the CPU time it spends is what an
    inline encode would block the loop for. An encoder that sleeps 20 ms but computes little counts
    as cheap."""
    fake = FakeEmbedder(delay_s=0.02)
    batcher = EmbedBatcher(inline_ms=2.0)
    embed_one_by_one(batcher, fake, ["first", "second", "third"])
    assert fake.threads[1:] == [threading.current_thread().name] * 2


def test_an_average_between_inline_ms_and_twice_it_stays_where_it_is():
    """Hysteresis: in the loop an embedder stays there until its average is over twice inline_ms, so
    an average near the line does not move it back and forth (and fill the log)."""
    fake = FakeEmbedder()
    # the average climbs to about 3, 5.3, 6.9 ms: over 5, under 10
    embed_one_by_one(EmbedBatcher(inline_ms=5.0), fake, [f"fast {i}" for i in range(3)], busy_s=0.012,
                     then=[f"dearer {i}" for i in range(3)])
    assert fake.threads[1:] == [threading.current_thread().name] * 5


def test_an_inline_encoder_failure_reaches_the_caller_and_the_next_prompt_is_served():
    fake = FakeEmbedder()
    batcher = EmbedBatcher(inline_ms=50.0)

    async def scenario() -> tuple[BaseException | None, np.ndarray]:
        try:
            await batcher.embed(fake, "measured first")
            fake.fail = True
            try:
                await batcher.embed(fake, "breaks")
                error = None
            except RuntimeError as exc:
                error = exc
            fake.fail = False
            return error, await batcher.embed(fake, "after")
        finally:
            await batcher.aclose()

    error, vector = asyncio.run(scenario())
    assert str(error) == "encoder broke"
    assert float(vector[0]) == len("after")


def test_negative_inline_ms_is_refused():
    with pytest.raises(ValueError, match="inline_ms"):
        EmbedBatcher(inline_ms=-1.0)
