"""The ``torch`` encoder as the server runs it: the SBERT model's transformer traced once into
TorchScript (``torch.jit.trace``) and cached on disk, run by torch without importing
sentence-transformers or transformers.

Why: importing sentence-transformers (and transformers with it) took about 5 of the 5.4 s from
process start to ``/readyz`` of a torch-encoder server; torch and the tokenizers library alone
import in about 1.5 s. The trace records the same torch operations as the model, so its vectors
are sentence-transformers' up to float rounding (measured: at most 1.3e-7 apart on the bundled
all-MiniLM-L6-v2, tested in ``tests/env/test_traced_embedder.py``).

The trace lives in ``<trace_dir>/<model>-torchscript-<hash>/`` (the hash: of the model files,
:data:`TRACE_VERSION` and the versions of torch, transformers and sentence-transformers), written
atomically as the ONNX exports are (:func:`env.model_cache.ensure_built`); the pipeline around it
(tokenizer, pooling, L2 normalisation) is :class:`env.exported_encoder.ExportedSentenceEncoder`. A
model that is not a Transformer then a mean or CLS Pooling is run by sentence-transformers instead
(one log line).
Training keeps sentence-transformers (:class:`env.embedder.Embedder`), on any device.

Why TorchScript, which torch deprecates in favour of ``torch.export``: loading an exported program
(``torch.export.load``) imports ``torch._dynamo`` and sympy, 4.1 to 4.6 s measured here, more than
the import it saves; ``torch.jit.load`` takes 0.15 s. The pinned torch (2.13) has both.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from contract.errors import UserError
from env.embedder import DEFAULT_MODEL, Embedder, resolve_model_path
from env.exported_encoder import (
    INPUT_NAMES,
    META_FILE,
    ExportedSentenceEncoder,
    export_name,
    pooling_config,
    transformer_for_export,
)
from env.model_cache import cache_key, ensure_built, package_versions

logger = logging.getLogger(__name__)

#: Bumped when the trace changes, so that older traces are not reused.
TRACE_VERSION = 1
#: The libraries whose versions key the trace: torch traces the graph that transformers and
#: sentence-transformers build.
TRACE_PACKAGES = ("torch", "transformers", "sentence-transformers")
_TRACE_FILE = "model.pt"


def _trace(model_path: Path, out: Path) -> dict[str, Any]:
    """Write ``model.pt`` (the traced transformer), the tokenizer and ``export.json`` into ``out``."""
    import torch

    network, st, inputs, meta = transformer_for_export(model_path)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code, its deprecation
        traced = torch.jit.trace(network, inputs, check_trace=False)
    traced.save(str(out / _TRACE_FILE))
    st.tokenizer.save_pretrained(str(out))
    meta = {"trace_version": TRACE_VERSION, "torch": torch.__version__, **meta}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def trace_path(model_path: Path, model_id: str, trace_dir: Path) -> Path:
    """Where the trace of ``model_path`` is cached: ``<trace_dir>/<model>-torchscript-<hash>``, the
    hash of the model files, :data:`TRACE_VERSION` and the versions of the libraries that build the
    traced graph (torch, transformers, sentence-transformers: :data:`TRACE_PACKAGES`)."""
    versions = package_versions(*TRACE_PACKAGES)
    key = cache_key(model_path, TRACE_VERSION, versions)
    return trace_dir / export_name(model_id, "torchscript", key)


def ensure_trace(model_path: Path, model_id: str, trace_dir: Path) -> Path:
    """The directory of the cached trace of ``model_path`` (traced now when missing).

    Raises:
        UserError: ``trace_dir`` cannot be written, the model cannot be traced, or it is not a
            Transformer then a mean or CLS Pooling.
    """
    return ensure_built(trace_path(model_path, model_id, trace_dir), META_FILE, lambda tmp: _trace(model_path, tmp),
                        f"the TorchScript trace of {model_id}")


class TracedSentenceEncoder(ExportedSentenceEncoder):
    """A TorchScript trace with a sentence-transformers-like :meth:`encode`.

    Args:
        directory: a trace written by :func:`ensure_trace`.
    """

    def __init__(self, directory: Path) -> None:
        import torch

        super().__init__(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # see the module docstring: why TorchScript
            self.network = torch.jit.load(str(directory / _TRACE_FILE), map_location="cpu").eval()

    def _hidden(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return self.network(*(torch.from_numpy(feed[n]) for n in INPUT_NAMES)).numpy()


class TracedEmbedder(Embedder):
    """:class:`~env.embedder.Embedder` of the ``torch`` encoder on the CPU, run from a cached
    TorchScript trace (see the module docstring).

    Same API as :class:`~env.embedder.Embedder` (``encode(texts) -> [N, D]`` float32, unit norm);
    ``encoder`` stays ``torch`` and ``model_id`` the model's name, while the on-disk cache keys its
    vectors by ``cache_key`` (``<model_id>#torchscript``), so they never mix with
    sentence-transformers' own.

    Args:
        model, cache_dir, batch_size, progress: as :class:`~env.embedder.Embedder`.
        trace_dir: directory of the cached traces.
        log: where the trace and fallback lines go (default: this module's logger).

    Attributes:
        trace_dir_in_use: the trace in use once the model is loaded; None before, or when the model
            is run by sentence-transformers.
    """

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, batch_size: int = 64,
                 progress: bool = True, trace_dir: str | Path = Path("var/torchscript"),
                 log: logging.Logger | None = None) -> None:
        super().__init__(model=model, cache_dir=cache_dir, device="cpu", batch_size=batch_size, progress=progress)
        self.trace_dir = Path(trace_dir)
        self.log = log or logger
        self.cache_key = f"{self.model_id}#torchscript"
        self.trace_dir_in_use: Path | None = None
        self._sentence_transformers = False

    @property
    def model(self) -> Any:
        """The traced encoder (traced on first use when not cached yet), or sentence-transformers'
        model for a model the trace cannot run.

        Raises:
            UserError: the model cannot be found, traced or loaded.
        """
        if self._model is None and not self._sentence_transformers:
            with self._load_lock:
                if self._model is None and not self._sentence_transformers:
                    self._load_trace()
        if self._sentence_transformers:
            return super().model
        return self._model

    def _load_trace(self) -> None:
        path = Path(resolve_model_path(self.model_name))
        try:
            pooling_config(path)
        except UserError as exc:
            self.log.info("torch encoder: %s; running it with sentence-transformers", exc)
            self.cache_key, self._sentence_transformers = self.model_id, True
            return
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a first trace loads the model with sentence-transformers
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        where = self.trace_dir_in_use = ensure_trace(path, self.model_id, self.trace_dir)
        try:
            self._model = TracedSentenceEncoder(where)
        except (OSError, ValueError, RuntimeError) as exc:
            raise UserError(f"cannot load the TorchScript trace {where}: {exc}") from None

    def describe(self) -> str:
        """``torch (TorchScript, var/torchscript/...)``: for the start-up log."""
        if self.trace_dir_in_use is None:
            return "torch (sentence-transformers)"
        return f"torch (TorchScript, {self.trace_dir_in_use})"
