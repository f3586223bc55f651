"""How many prompts one forward pass of the embedding model should take, and which ONNX export runs
it: measured, not assumed.

On a GPU a padded batch of 64 costs little more than one prompt; on a small CPU it can cost more
per prompt than prompts one at a time (padding to the longest, cache misses). At start-up, with
``ROUTER_ENCODE_BATCH=auto``, :func:`choose_pass_size` times the model on sample prompts of mixed
length in passes of each candidate size and keeps the size with the lowest cost per prompt (the
smallest, among sizes within a few percent of it). The
micro-batcher (:mod:`router.batcher`) gathers concurrent prompts into passes of the chosen size,
so gathering never makes a prompt dearer than the measurement says.

A measurement takes seconds, so it is a *plan*, stored in ``ROUTER_PLAN_DIR`` (:class:`PlanStore`)
and keyed by what it measured (the encoder as described, its model, the CPU model, the threads): a
restart on the same machine reads it instead of timing again. Neither choice changes a decision
(a pass's vectors are those of one prompt up to float rounding, and both ONNX exports' vectors are
the transformer's), only how fast it is reached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from env.encoders import ms_per_prompt_one_at_a_time

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
    costs = ms_per_prompt_one_at_a_time({e.encoder: e for e in embedders}, sample_prompts(samples), repeats)
    chosen = min(embedders, key=lambda e: costs[e.encoder])
    logger.info("encoder %s (measured ms per prompt: %s)", chosen.encoder,
                ", ".join(f"{name}: {cost:.2f}" for name, cost in costs.items()))
    return chosen, costs


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor`), part of a plan's key."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class PlanStore:
    """Measured plans on disk: one JSON file per key under ``directory``, written atomically
    (a temporary file renamed into place); a file that cannot be read is measured again.

    Args:
        directory: ``ROUTER_PLAN_DIR`` (created on the first write).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _path(self, kind: str, key: dict[str, Any]) -> Path:
        digest = hashlib.sha256(json.dumps({"kind": kind, **key}, sort_keys=True).encode()).hexdigest()[:16]
        return self.directory / f"{kind}-{digest}.json"

    def get_or_measure(self, kind: str, key: dict[str, Any], measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The stored plan of ``(kind, key)``, else ``measure()``'s, stored; logged either way."""
        key = {**key, "cpu": cpu_model()}
        path = self._path(kind, key)
        try:
            plan = json.loads(path.read_text(encoding="utf-8"))["plan"]
            logger.info("%s plan read from %s (measured on this CPU earlier): %s", kind, path, plan)
            return plan
        except (OSError, ValueError, KeyError, TypeError):
            pass
        plan = measure()
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"key": key, "plan": plan}, indent=1), encoding="utf-8")
            os.replace(tmp, path)
        except OSError as exc:  # a read-only directory: measured again at the next start
            logger.warning("%s plan not stored in %s: %s", kind, self.directory, exc)
        return plan


def planned_pass_size(embedder: Any, store: PlanStore) -> int:
    """:func:`choose_pass_size`'s choice for ``embedder``, read from ``store`` when this CPU measured
    it before; sets ``embedder.batch_size``."""
    describe = getattr(embedder, "describe", None)
    key = {"encoder": describe() if describe is not None else embedder.encoder, "model": embedder.cache_key,
           "device": str(getattr(embedder, "device", None)), "candidates": list(CANDIDATES), "threads": _threads()}
    plan = store.get_or_measure("pass-size", key, lambda: {"size": choose_pass_size(embedder)[0]})
    embedder.batch_size = int(plan["size"])
    return embedder.batch_size


def planned_encoder(embedders: Sequence[Any], store: PlanStore) -> Any:
    """:func:`choose_encoder`'s choice among ``embedders``, read from ``store`` when this CPU measured
    it before."""
    key = {"encoders": [e.describe() if hasattr(e, "describe") else e.encoder for e in embedders],
           "model": embedders[0].model_id, "threads": _threads()}
    plan = store.get_or_measure("encoder", key, lambda: {"encoder": choose_encoder(embedders)[0].encoder})
    return next((e for e in embedders if e.encoder == plan["encoder"]), embedders[0])


def _threads() -> int:
    import torch

    return torch.get_num_threads()
