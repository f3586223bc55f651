"""The SBERT encoder run by ONNX Runtime with int8 weights and int8 compute (``ROUTER_ENCODER=onnx-int8``).

The bundled all-MiniLM-L6-v2 (or any SBERT model of a ``Transformer`` module then mean or CLS
``Pooling``) is exported once from its local files and cached on disk; nothing is fetched from a hub:

1. ``torch.onnx.export`` of the transformer (inputs ``input_ids``, ``attention_mask``,
   ``token_type_ids``; output ``last_hidden_state``; batch and sequence axes dynamic), the
   tokenizer saved beside it.
2. Every MatMul with a constant weight becomes ONNX Runtime's ``MatMulNBits`` (:data:`SCHEME`):
   weights int8, symmetric, one scale per block of 16 along the inner dimension; at run time each
   block of 16 activations of a token is quantised to int8 and the products run on the CPU's int8
   instructions (VNNI, AVX2, NEON: ONNX Runtime picks the kernel).

Why not sentence-transformers' own ``backend="onnx"`` with optimum's dynamic quantisation: it
needs ``optimum-onnx``, whose newest release pins ``transformers<4.58`` while sentence-transformers
6 needs ``transformers>=5``; and the scheme of optimum's presets (``AutoQuantizationConfig.avx512_vnni``:
weights int8 per channel, each activation tensor quantised with one uint8 scale for the whole tensor)
is too coarse for a router: measured on the 774 test prompts of the shipped data it keeps
cosine >= 0.985 to the torch vectors, and a trained policy then decides 2.2% of them differently,
against cosine >= 0.9996 and 0.3% with blocks of 16 (docs/serving.md has the figures).

The export lives in ``<onnx_dir>/<model>-<quantisation>-<hash>/`` (the hash: of the model files, the
scheme, :data:`EXPORT_VERSION` and the versions of torch, transformers, sentence-transformers and
ONNX Runtime), written into a
temporary directory beside it and renamed into place, so that processes starting at once each
either write a complete copy or use the one that won. Tokenisation (the model's own tokenizer,
its ``max_seq_length``), pooling and L2 normalisation follow sentence-transformers, so
:class:`OnnxEmbedder` is a drop-in :class:`~env.embedder.Embedder`.

A CPU without the instructions of ONNX Runtime's int8 kernels (x86 without AVX2 and FMA, or
another architecture than x86-64 and ARM64) gets the export without quantisation (``onnx-fp32``:
the torch vectors up to float rounding), said in one warning.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import warnings
from dataclasses import dataclass
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
    transformer_for_export,
)
from env.model_cache import cache_key, ensure_built, package_versions

logger = logging.getLogger(__name__)

#: What to install for ``onnx-int8`` (onnx-ir: ONNX Runtime's MatMulNBits quantiser imports it).
INSTALL_HINT = "pip install onnxruntime onnx onnx-ir"
#: Bumped when the export changes, so that older exports are not reused.
EXPORT_VERSION = 1
#: The libraries whose versions key the export: torch exports the graph that transformers and
#: sentence-transformers build, ONNX Runtime quantises it.
EXPORT_PACKAGES = ("torch", "transformers", "sentence-transformers", "onnxruntime")
_ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class Int8Scheme:
    """How the transformer's MatMuls are quantised (ONNX Runtime's ``MatMulNBits``).

    Attributes:
        bits: bits per weight.
        block_size: weights along the inner dimension sharing one scale (symmetric).
        accuracy_level: 4: int8 compute; each block of ``block_size`` activations of a token is
            quantised to int8 at run time (and so depends on that token alone).
    """

    bits: int = 8
    block_size: int = 16
    accuracy_level: int = 4

    @property
    def label(self) -> str:
        """``int8-b16``: as in cache names."""
        return f"int{self.bits}-b{self.block_size}"


#: The scheme of ``onnx-int8``.
SCHEME = Int8Scheme()


def cpu_flags() -> set[str]:
    """The instruction-set flags of this CPU (``/proc/cpuinfo``; empty where it cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def int8_instructions(flags: set[str], machine: str) -> str | None:
    """The best instruction set of a CPU with ``flags`` on ``machine`` (``platform.machine()``)
    that ONNX Runtime's int8 kernels use (``avx512_vnni``, ``avx_vnni``, ``avx512``, ``avx2``,
    ``neon``); None when it has none of them (x86 without AVX2, or another architecture)."""
    machine = machine.lower()
    if machine in ("aarch64", "arm64"):
        return "neon"
    if machine not in ("x86_64", "amd64"):
        return None
    if "avx512_vnni" in flags:
        return "avx512_vnni"
    if "avx_vnni" in flags:
        return "avx_vnni"
    if "avx512f" in flags and "avx512bw" in flags:
        return "avx512"
    if "avx2" in flags and "fma" in flags:
        return "avx2"
    return None


def require_onnxruntime(export: bool = False) -> None:
    """Raise :class:`UserError` (one line, with the install command) unless ONNX Runtime imports, and
    with ``export`` onnx and onnx-ir too (only an export needs them; they take a second to import)."""
    try:
        import onnxruntime  # noqa: F401

        if export:
            import onnx  # noqa: F401
            import onnx_ir  # noqa: F401
    except ImportError as exc:
        raise UserError(f"the ONNX encoders (ROUTER_ENCODER=onnx, onnx-int8, onnx-fp32) need onnxruntime, onnx and "
                        f"onnx-ir ({exc}); install them with: "
                        f"{INSTALL_HINT}") from None


def _quantizer() -> Any:
    """ONNX Runtime's ``MatMulNBitsQuantizer`` class, imported without the root-logger set-up its
    module does on import (``logging.basicConfig`` at INFO would print every library's log)."""
    root = logging.getLogger()
    guard = logging.NullHandler()
    root.addHandler(guard)  # basicConfig does nothing while the root logger has a handler
    try:
        from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    finally:
        root.removeHandler(guard)
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    return MatMulNBitsQuantizer


def _export(model_path: Path, out: Path, scheme: Int8Scheme | None) -> dict[str, Any]:
    """Write ``model.onnx`` (quantised with ``scheme``, or not), the tokenizer and ``export.json`` into ``out``."""
    require_onnxruntime(export=True)
    import torch

    network, st, inputs, meta = transformer_for_export(model_path)
    names = list(INPUT_NAMES)
    fp32 = out / ("model_fp32.onnx" if scheme is not None else _ONNX_FILE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the tracer's notes on shape-dependent Python code
        torch.onnx.export(network, inputs, str(fp32), dynamo=False, opset_version=17,
                          input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes={n: {0: "batch", 1: "sequence"} for n in [*names, "last_hidden_state"]})
    if scheme is not None:
        quantizer = _quantizer()(str(fp32), bits=scheme.bits, block_size=scheme.block_size, is_symmetric=True,
                                 accuracy_level=scheme.accuracy_level, op_types_to_quantize=("MatMul",))
        quantizer.process()
        quantizer.model.save_model_to_file(str(out / _ONNX_FILE))
        fp32.unlink()
    st.tokenizer.save_pretrained(str(out))
    meta = {"export_version": EXPORT_VERSION, "quantization": scheme.label if scheme is not None else "fp32", **meta}
    (out / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return meta


def export_path(model_path: Path, model_id: str, scheme: Int8Scheme | None, onnx_dir: Path) -> Path:
    """Where the export of ``model_path`` with ``scheme`` is cached: ``<onnx_dir>/<model>-<quantisation>-<hash>``,
    the hash of the model files, the scheme, :data:`EXPORT_VERSION` and the versions of the
    libraries that build and quantise the graph (:data:`EXPORT_PACKAGES`)."""
    label = scheme.label if scheme is not None else "fp32"
    versions = package_versions(*EXPORT_PACKAGES)
    key = cache_key(model_path, EXPORT_VERSION, scheme, versions)
    return onnx_dir / export_name(model_id, label, key)


def ensure_export(model_path: Path, model_id: str, scheme: Int8Scheme | None, onnx_dir: Path) -> Path:
    """The directory of the cached export of ``model_path`` (exported now when missing), written
    atomically (:func:`env.model_cache.ensure_built`).

    Raises:
        UserError: ``onnx_dir`` cannot be written, or the export fails.
    """
    label = scheme.label if scheme is not None else "fp32"
    return ensure_built(export_path(model_path, model_id, scheme, onnx_dir), META_FILE,
                        lambda tmp: _export(model_path, tmp, scheme), f"the ONNX export of {model_id} ({label})")


class OnnxSentenceEncoder(ExportedSentenceEncoder):
    """An ONNX Runtime session with a sentence-transformers-like :meth:`encode`
    (:class:`~env.exported_encoder.ExportedSentenceEncoder`).

    Args:
        directory: an export written by :func:`ensure_export`.
        threads: ONNX Runtime intra-op threads (inter-op: 1).
    """

    def __init__(self, directory: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        super().__init__(directory)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(directory / _ONNX_FILE), options, providers=["CPUExecutionProvider"])

    def _hidden(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feed)[0]


class OnnxEmbedder(Embedder):
    """:class:`~env.embedder.Embedder` whose model runs in ONNX Runtime, int8 where the CPU allows.

    Same API as :class:`~env.embedder.Embedder` (``encode(texts) -> [N, D]`` float32, unit norm);
    ``model_id`` stays the model's canonical name (checkpoints match on it), while the on-disk
    cache keys its vectors by ``cache_key`` (``<model_id>#onnx-<quantisation>``), so they never
    mix with the torch encoder's.

    Args:
        model, cache_dir, batch_size, progress: as :class:`~env.embedder.Embedder`.
        onnx_dir: directory of the cached exports.
        threads: ONNX Runtime intra-op threads.
        quantize: False: the export without quantisation (``onnx-fp32``).
        log: where the fallback warning and the export line go (default: this module's logger).

    Attributes:
        instructions: the CPU's int8 instruction set (:func:`int8_instructions`); None: it has none.
        scheme: the quantisation (:data:`SCHEME`); None: not quantised.
        quantization: ``int8-b16`` or ``fp32``.
        encoder: ``onnx-int8``, or ``onnx-fp32`` when not quantised.
        export_dir: the export in use (once the model is loaded).

    Raises:
        UserError: ONNX Runtime cannot be imported (onnx and onnx-ir: at the first export); the
            message names the install command.
    """

    def __init__(self, model: str = DEFAULT_MODEL, cache_dir: str | Path | None = None, batch_size: int = 64,
                 progress: bool = True, onnx_dir: str | Path = Path("var/onnx"), threads: int = 1,
                 quantize: bool = True, log: logging.Logger | None = None) -> None:
        require_onnxruntime()
        super().__init__(model=model, cache_dir=cache_dir, device="cpu", batch_size=batch_size, progress=progress)
        self.onnx_dir = Path(onnx_dir)
        self.threads = threads
        self.log = log or logger
        self.instructions = int8_instructions(cpu_flags(), platform.machine())
        self.scheme: Int8Scheme | None = SCHEME if quantize and self.instructions is not None else None
        if quantize and self.instructions is None:
            self.log.warning("this CPU (%s) has none of the instructions of ONNX Runtime's int8 kernels (AVX2 and "
                             "FMA, AVX-512, VNNI on x86-64; NEON on ARM64): the onnx encoder runs without "
                             "quantisation (onnx-fp32)", platform.machine() or "unknown")
        self.quantization = self.scheme.label if self.scheme is not None else "fp32"
        self.encoder = "onnx-int8" if self.scheme is not None else "onnx-fp32"
        self.cache_key = f"{self.model_id}#onnx-{self.quantization}"
        self.export_dir: Path | None = None

    @property
    def model(self) -> OnnxSentenceEncoder:
        """The ONNX Runtime encoder (exported on first use when not cached yet).

        Raises:
            UserError: the model cannot be found, exported or loaded.
        """
        if self._model is None:
            with self._load_lock:
                if self._model is None:
                    os.environ.setdefault("HF_HUB_OFFLINE", "1")
                    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
                    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
                    path = Path(resolve_model_path(self.model_name))
                    if not path.is_dir():
                        raise UserError(f"the onnx encoder needs a local model directory, not {self.model_name!r}")
                    self.export_dir = ensure_export(path, self.model_id, self.scheme, self.onnx_dir)
                    try:
                        self._model = OnnxSentenceEncoder(self.export_dir, self.threads)
                    except (OSError, ValueError, RuntimeError) as exc:
                        raise UserError(f"cannot load the ONNX export {self.export_dir}: {exc}") from None
        return self._model

    def describe(self) -> str:
        """``onnx-int8 (int8-b16 on avx512_vnni, 1 threads, var/onnx/...)``: for the start-up log."""
        isa = f" on {self.instructions}" if self.scheme is not None else ""
        where = f", {self.export_dir}" if self.export_dir is not None else ""
        return f"{self.encoder} ({self.quantization}{isa}, {self.threads} threads{where})"
