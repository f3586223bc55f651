"""The encoder's pass size is measured at start-up (ROUTER_ENCODE_BATCH=auto), not assumed; the server
says how many passes it runs at once (ROUTER_ENCODE_THREADS)."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from router.encode_plan import CANDIDATES, LENGTHS, choose_encoder, choose_pass_size, sample_prompts


class Clock:
    """A virtual ``time.perf_counter`` that only the fake model moves (no timing noise)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class TimedModel:
    """A model whose pass of ``n`` prompts takes ``fixed + per_prompt * n * n`` seconds of the clock
    (padding growing with the pass), so the cheapest size per prompt is known."""

    def __init__(self, clock: Clock, fixed: float, per_prompt: float) -> None:
        self.clock, self.fixed, self.per_prompt = clock, fixed, per_prompt

    def encode(self, texts, batch_size, **_):
        for start in range(0, len(texts), batch_size):
            n = len(texts[start:start + batch_size])
            self.clock.now += self.fixed + self.per_prompt * n * n
        return np.zeros((len(texts), 4), dtype=np.float32)


class FakeEmbedder:
    def __init__(self, model) -> None:
        self.model, self.batch_size = model, 64


def test_the_cheapest_pass_size_per_prompt_is_chosen_and_set(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    # per prompt: fixed / n + per_prompt * n, lowest at n = sqrt(fixed / per_prompt) = 4
    embedder = FakeEmbedder(TimedModel(clock, fixed=0.0016, per_prompt=0.0001))
    chosen, costs = choose_pass_size(embedder)
    assert chosen == 4 and embedder.batch_size == 4
    assert set(costs) == set(CANDIDATES) and costs[4] == min(costs.values())
    # no padding cost: the largest pass wins
    embedder = FakeEmbedder(TimedModel(clock, fixed=0.002, per_prompt=0.0))
    assert choose_pass_size(embedder)[0] == max(CANDIDATES)


def test_the_faster_encoder_is_chosen(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    slow, fast = (FakeEmbedder(TimedModel(clock, fixed=cost, per_prompt=0.0)) for cost in (0.004, 0.003))
    slow.encoder, fast.encoder = "onnx-int8", "onnx-fp32"
    chosen, costs = choose_encoder([slow, fast])
    assert chosen is fast and costs == pytest.approx({"onnx-int8": 4.0, "onnx-fp32": 3.0})
    assert choose_encoder([fast, slow])[0] is fast  # not the first one listed


def test_sample_prompts_are_distinct_and_of_mixed_length():
    prompts = sample_prompts(12)
    assert len(set(prompts)) == 12
    assert {len(p.split()) - 1 for p in prompts} == set(LENGTHS)  # each after its "[i]"


def test_a_larger_pass_must_be_clearly_cheaper(monkeypatch):
    """1.0 ms a prompt alone; 0.98 ms in larger passes (within the margin) keeps one at a time, 0.90 ms
    (clearly cheaper) takes the smallest of those larger passes."""
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    for larger, expected in ((0.00098, 1), (0.0009, 2)):
        embedder = FakeEmbedder(TimedModel(clock, fixed=0.0, per_prompt=0.0))
        embedder.model.encode = lambda texts, batch_size, larger=larger, **_: _advance(
            clock, len(texts), 0.001 if batch_size == 1 else larger)
        assert choose_pass_size(embedder)[0] == expected


def _advance(clock: Clock, n: int, per_prompt_s: float) -> np.ndarray:
    clock.now += n * per_prompt_s
    return np.zeros((n, 4), dtype=np.float32)


def test_the_server_measures_and_exports_its_pass_size(sqlite_server):
    text = httpx.get(f"{sqlite_server.url}/metrics", timeout=30).text
    match = re.search(r"^router_encode_pass_size ([0-9.]+)$", text, re.M)
    assert match and int(float(match.group(1))) in CANDIDATES
    assert "encode passes of" in sqlite_server.log()
    threads = re.search(r"^router_encode_threads ([0-9.]+)$", text, re.M)
    assert threads and f"encode threads: {int(float(threads.group(1)))}" in sqlite_server.log()
