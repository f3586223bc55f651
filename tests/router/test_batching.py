"""Micro-batched embedding (router.batcher): fewer encode calls, identical vectors, the LRU cache."""

from __future__ import annotations

import asyncio
import threading
import time

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
    """Deterministic 4-dim vectors; records every batch; optionally slow or failing."""

    model_id = "fake"

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.batches: list[list[str]] = []
        self.lock = threading.Lock()

    def encode(self, texts: list[str]) -> np.ndarray:
        with self.lock:
            self.batches.append(list(texts))
        if self.delay_s:
            time.sleep(self.delay_s)
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
