"""The encoder's pass size is measured at start-up (ROUTER_ENCODE_BATCH=auto), not assumed; the server
says how many passes it runs at once (ROUTER_ENCODE_THREADS)."""

from __future__ import annotations

import re
import time

import httpx
import numpy as np
import pytest

from router.encode_plan import (
    CANDIDATES,
    LENGTHS,
    PlanStore,
    choose_encoder,
    choose_pass_size,
    planned_pass_size,
    sample_prompts,
)


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
    log = sqlite_server.log()
    assert "encode passes of" in log or "pass-size plan read from" in log  # measured, or by an earlier server
    threads = re.search(r"^router_encode_threads ([0-9.]+)$", text, re.M)
    assert threads and f"encode threads: {int(float(threads.group(1)))}" in sqlite_server.log()


def test_a_plan_is_measured_once_per_key_and_read_back(monkeypatch, tmp_path):
    clock = Clock()
    monkeypatch.setattr(time, "perf_counter", clock)
    store = PlanStore(tmp_path / "plans")
    embedder = FakeEmbedder(TimedModel(clock, fixed=0.0016, per_prompt=0.0001))
    embedder.encoder, embedder.cache_key = "torch", "model-a"
    assert planned_pass_size(embedder, store) == 4
    files = list((tmp_path / "plans").glob("pass-size-*.json"))
    assert len(files) == 1 and not list((tmp_path / "plans").glob("*.tmp"))
    # a restart reads it: the model is not timed again (its clock does not move)
    embedder.batch_size, before = 64, clock.now
    assert planned_pass_size(embedder, store) == 4 and embedder.batch_size == 4 and clock.now == before
    # another model is another key; an unreadable plan is measured again
    other = FakeEmbedder(TimedModel(clock, fixed=0.002, per_prompt=0.0))
    other.encoder, other.cache_key = "torch", "model-b"
    assert planned_pass_size(other, store) == max(CANDIDATES)
    files[0].write_text("{not json")
    assert planned_pass_size(embedder, store) == 4 and clock.now > before
    # a directory that cannot be written: measured, served, not stored
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert planned_pass_size(embedder, PlanStore(blocked / "plans")) == 4


def test_a_restarted_server_reads_its_plan_instead_of_timing_again(start_server, checkpoint, tmp_path):
    env = {"ROUTER_CHECKPOINT": str(checkpoint.parent), "ROUTER_PLAN_DIR": str(tmp_path / "plans"),
           "ROUTER_SQLITE_PATH": str(tmp_path / "experience.sqlite3")}
    first = start_server(env).wait_ready()
    sizes = []
    for server in (first, None):
        if server is None:
            first.stop()
            server = start_server(env).wait_ready()
        text = httpx.get(f"{server.url}/metrics", timeout=30).text
        sizes.append(re.search(r"^router_encode_pass_size ([0-9.]+)$", text, re.M).group(1))
    assert "encode passes of" in first.log() and "pass-size plan read from" not in first.log()
    assert "pass-size plan read from" in server.log() and "encode passes of" not in server.log()
    assert sizes[0] == sizes[1]
