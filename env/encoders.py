"""Every encoder of prompt text, built by one factory: :func:`make_embedder` (``ROUTER_ENCODER``).

- ``torch``: :class:`env.embedder.Embedder`, sentence-transformers on torch;
- ``onnx-int8`` / ``onnx-fp32``: :class:`env.onnx_embedder.OnnxEmbedder`, the same model exported
  to ONNX Runtime, with int8 weights and compute or without quantisation.
"""

from __future__ import annotations

import logging
from pathlib import Path

from contract.errors import UserError
from env.embedder import DEFAULT_MODEL, Embedder
from env.onnx_embedder import OnnxEmbedder

#: The encoders :func:`make_embedder` builds (``ROUTER_ENCODER`` also takes ``onnx``: the faster of
#: the two ONNX ones, measured at start-up by :func:`router.encode_plan.choose_encoder`).
ENCODERS = ("torch", "onnx-int8", "onnx-fp32")


def make_embedder(encoder: str, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None,
                  device: str | None = None, batch_size: int = 64, progress: bool = True,
                  onnx_dir: str | Path = Path("var/onnx"), threads: int = 1,
                  log: logging.Logger | None = None) -> Embedder:
    """The :class:`~env.embedder.Embedder` of ``encoder`` (one of :data:`ENCODERS`).

    ``onnx-fp32`` is the ONNX export without quantisation (torch's vectors up to float rounding).

    Raises:
        UserError: an unknown encoder, or an ONNX one without ONNX Runtime, onnx or onnx-ir.
    """
    if encoder == "torch":
        return Embedder(model=model, cache_dir=cache_dir, device=device, batch_size=batch_size, progress=progress)
    if encoder in ("onnx-int8", "onnx-fp32"):
        return OnnxEmbedder(model=model, cache_dir=cache_dir, batch_size=batch_size, progress=progress,
                            onnx_dir=onnx_dir, threads=threads, quantize=encoder == "onnx-int8", log=log)
    raise UserError(f"unknown encoder {encoder!r}: one of {', '.join(ENCODERS)}")
