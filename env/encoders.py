"""Every encoder of prompt text, built by one factory: :func:`make_embedder` (``ROUTER_ENCODER``).

- ``torch``: :class:`env.embedder.Embedder`, sentence-transformers on torch; given a ``trace_dir``
  on the CPU (the server), :class:`env.traced_embedder.TracedEmbedder`, the same model traced once
  into TorchScript (the same vectors up to float rounding, without importing transformers);
- ``onnx-int8`` / ``onnx-fp32``: :class:`env.onnx_embedder.OnnxEmbedder`, the same model exported
  to ONNX Runtime, with int8 weights and compute or without quantisation;
- ``static``: :class:`env.static_embedder.StaticEmbedder`, static embeddings distilled from the model.

The first three give the transformer's vectors (up to quantisation); ``static`` gives other ones,
so a policy records which it was trained on (:func:`vectors_of`, ``policy.json`` ``embedding.encoder``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from contract.errors import UserError
from env.embedder import DEFAULT_MODEL, Embedder
from env.onnx_embedder import OnnxEmbedder
from env.static_embedder import StaticEmbedder
from env.traced_embedder import TracedEmbedder

#: The encoders :func:`make_embedder` builds (``ROUTER_ENCODER`` also takes ``onnx``: the faster of
#: the two ONNX ones, measured at start-up by :func:`router.encode_plan.choose_encoder`).
ENCODERS = ("torch", "onnx-int8", "onnx-fp32", "static")


def vectors_of(encoder: str) -> str:
    """The vectors ``encoder`` gives: ``static``, or ``transformer`` (torch and the ONNX exports)."""
    return "static" if encoder == "static" else "transformer"


def check_vectors(trained: str, encoder: str, what: str) -> None:
    """Refuse to serve or train on ``encoder`` a policy trained on ``trained`` vectors.

    Raises:
        UserError: one line: ``what`` (the policy) needs the other encoder.
    """
    if vectors_of(encoder) != trained:
        fix = "static" if trained == "static" else "torch (or onnx)"
        raise UserError(f"{what} was trained on {trained} embeddings, not on those of the {encoder} encoder: "
                        f"serve it with ROUTER_ENCODER={fix}, or leave ROUTER_ENCODER unset")


def make_embedder(encoder: str, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None,
                  device: str | None = None, batch_size: int = 64, progress: bool = True,
                  onnx_dir: str | Path = Path("var/onnx"), threads: int = 1,
                  static_dir: str | Path = Path("var/static"), log: logging.Logger | None = None,
                  static_version: int | None = None, trace_dir: str | Path | None = None) -> Embedder:
    """The :class:`~env.embedder.Embedder` of ``encoder`` (one of :data:`ENCODERS`).

    ``onnx-fp32`` is the ONNX export without quantisation (torch's vectors up to float rounding);
    ``static`` distils (once, into ``static_dir``) and uses static embeddings of ``model``, of the
    distillation ``static_version`` (None: the newest, what training uses); ``torch`` on the CPU with a
    ``trace_dir`` runs a TorchScript trace of the model cached there (what the server does).

    Raises:
        UserError: an unknown encoder or static distillation, or an ONNX one without ONNX Runtime,
            onnx or onnx-ir.
    """
    if encoder == "torch":
        if trace_dir is not None and device in (None, "cpu"):
            return TracedEmbedder(model=model, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                                  trace_dir=trace_dir, log=log)
        return Embedder(model=model, cache_dir=cache_dir, device=device, batch_size=batch_size, progress=progress)
    if encoder == "static":
        return StaticEmbedder(model=model, cache_dir=cache_dir, static_dir=static_dir, batch_size=batch_size,
                              progress=progress, version=static_version)
    if encoder in ("onnx-int8", "onnx-fp32"):
        return OnnxEmbedder(model=model, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                            onnx_dir=onnx_dir, threads=threads, quantize=encoder == "onnx-int8", log=log)
    raise UserError(f"unknown encoder {encoder!r}: one of {', '.join(ENCODERS)}")


def ms_per_prompt_one_at_a_time(embedders: Mapping[str, Any], texts: Sequence[str],
                                repeats: int = 2) -> dict[str, float]:
    """Each embedder's wall-clock ms per prompt when its model encodes ``texts`` one at a time, as a
    request is encoded (bypassing the embedding cache): the fastest of ``repeats`` rounds, the
    embedders alternating within a round so that a disturbance does not fall on one only (after one
    warm-up call each). Used to choose an encoder at start-up (``router.encode_plan``) and at
    training (``training.serving_encoder``).

    Returns:
        ``{name: ms per prompt}``, the names of ``embedders``.
    """
    def once(model: Any, batch: Sequence[str]) -> float:
        start = time.perf_counter()
        model.encode(list(batch), batch_size=1, normalize_embeddings=True, convert_to_numpy=True,
                     show_progress_bar=False)
        return (time.perf_counter() - start) * 1000.0 / len(batch)

    for embedder in embedders.values():
        once(embedder.model, texts[:2])  # load and warm up
    best = dict.fromkeys(embedders, float("inf"))
    for _ in range(max(1, repeats)):
        for name, embedder in embedders.items():
            best[name] = min(best[name], once(embedder.model, texts))
    return best
