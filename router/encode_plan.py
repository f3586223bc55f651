"""How many prompts one forward pass of the embedding model should take, and which ONNX export runs
it: measured, not assumed.

On a GPU a padded batch of 64 costs little more than one prompt; on a small CPU it can cost more
per prompt than prompts one at a time (padding to the longest, cache misses). At start-up, with
``ROUTER_ENCODE_BATCH=auto``, :func:`choose_pass_size` times the model on sample prompts of mixed
length in passes of each candidate size and keeps the size with the lowest cost per prompt (the
smallest, among sizes within a few percent of it). The
micro-batcher (:mod:`router.batcher`) gathers concurrent prompts into passes of the chosen size,
so gathering never makes a prompt dearer than the measurement says.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

logger = logging.getLogger(__name__)

#: Pass sizes tried.
CANDIDATES = (1, 2, 4, 8, 16)
_TEXT = ("route each prompt to the agent that answers it best for the least cost while the queues of busy "
         "agents grow and shrink with the traffic of every client")


#: Words of the sample prompts, cycled: a question to the model's input limit (256 tokens), doubling, so
#: that a size which pads short prompts to long ones pays for it as it would on real traffic.
LENGTHS = (8, 16, 32, 64, 128, 192)
#: A larger pass must be this much cheaper per prompt than the smallest one within reach to be kept.
MARGIN = 0.05
#: The first round stops at a size this many times dearer per prompt than the best so far (past the
#: best, larger passes only pad more); later rounds retime the sizes within RETRY of the best.
STOP, RETRY = 1.5, 1.25


def sample_prompts(count: int) -> list[str]:
    """``count`` distinct prompts of :data:`LENGTHS` words (the lengths cycle), deterministic."""
    vocabulary = _TEXT.split()
    out = []
    for i in range(count):
        words = LENGTHS[i % len(LENGTHS)]
        out.append(f"[{i}] " + " ".join(vocabulary[(i + j) % len(vocabulary)] for j in range(words)))
    return out


def _ms_per_prompt(model: Any, texts: list[str], size: int) -> float:
    """Wall-clock ms per prompt of ``model.encode(texts)`` in passes of ``size``."""
    start = time.perf_counter()
    model.encode(texts, batch_size=size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
    return (time.perf_counter() - start) * 1000.0 / len(texts)


def choose_pass_size(embedder: Any, candidates: tuple[int, ...] = CANDIDATES, samples: int = 12,
                     repeats: int = 2) -> tuple[int, dict[int, float]]:
    """Time ``embedder``'s model on ``samples`` prompts in passes of each candidate size; set and
    return the cheapest.

    The sizes are timed in rising order up to one :data:`STOP` times dearer than the best so far; in
    ``repeats - 1`` more rounds those within :data:`RETRY` of the best are timed again, each keeping its
    fastest timing (the least disturbed by other work). The smallest size whose cost per prompt is within
    :data:`MARGIN` of the lowest wins:
    a larger pass pays only when it is clearly cheaper, since real prompts may vary more in length than
    the samples. The model is called directly (``embedder.model.encode``), so the on-disk embedding
    cache is neither read nor filled.

    Args:
        embedder: an :class:`env.embedder.Embedder` (its ``batch_size`` is set to the choice).
        candidates: pass sizes to try.
        samples: prompts per timing (:func:`sample_prompts`).
        repeats: rounds of timings (at least 1).

    Returns:
        ``(chosen size, {size timed: ms per prompt})``.
    """
    texts = sample_prompts(samples)
    model = embedder.model
    _ms_per_prompt(model, texts[:4], 4)  # warm-up
    costs: dict[int, float] = {}
    for size in sorted(candidates):  # first round: up to a size far dearer than the best so far
        costs[size] = _ms_per_prompt(model, texts, size)
        if costs[size] > STOP * min(costs.values()):
            break
    for _ in range(repeats - 1):  # later rounds: the sizes still in the running
        lowest = min(costs.values())
        for size in [s for s, c in costs.items() if c <= RETRY * lowest]:
            costs[size] = min(costs[size], _ms_per_prompt(model, texts, size))
    lowest = min(costs.values())
    chosen = min(size for size, cost in costs.items() if cost <= lowest * (1.0 + MARGIN))
    embedder.batch_size = chosen
    logger.info("encode passes of %d prompts (measured ms per prompt: %s)", chosen,
                ", ".join(f"{s}: {c:.2f}" for s, c in costs.items()))
    return chosen, costs


def choose_encoder(embedders: Sequence[Any], samples: int = 16, repeats: int = 2) -> tuple[Any, dict[str, float]]:
    """The embedder of ``embedders`` whose model encodes ``samples`` prompts (:func:`sample_prompts`)
    one at a time in the least time (ms per prompt; the fastest of ``repeats`` timings of each,
    alternating between the embedders so that a disturbance does not fall on one only).

    ``ROUTER_ENCODER=onnx`` uses it on the int8 and the fp32 ONNX exports: which is faster depends
    on the CPU (int8 wins where it has VNNI; on plain AVX2, fp32 can win).

    Returns:
        ``(the chosen embedder, {embedder.encoder: ms per prompt})``.
    """
    texts = sample_prompts(samples)
    for embedder in embedders:
        _ms_per_prompt(embedder.model, texts[:2], 1)  # warm-up
    best = {id(e): float("inf") for e in embedders}
    for _ in range(repeats):
        for embedder in embedders:
            best[id(embedder)] = min(best[id(embedder)], _ms_per_prompt(embedder.model, texts, 1))
    chosen = min(embedders, key=lambda e: best[id(e)])
    costs = {e.encoder: best[id(e)] for e in embedders}
    logger.info("encoder %s (measured ms per prompt: %s)", chosen.encoder,
                ", ".join(f"{name}: {cost:.2f}" for name, cost in costs.items()))
    return chosen, costs
