"""The ONNX Runtime int8 encoder: the export cache, the fallback, the missing package, and its API."""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from contract.errors import UserError
from env import onnx_embedder
from env.embedder import Embedder
from env.encoders import make_embedder
from env.onnx_embedder import SCHEME, OnnxEmbedder, ensure_export, int8_instructions
from tests.env.threads import assert_encodes_alike_in_threads

TEXTS = ["Route this maths question: what is 17 * 23?", "Write a haiku about queues.", "", "x " * 400]


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory) -> Path:
    """One export cache for the session (the int8 export is made once, by the first test using it)."""
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def int8(onnx_dir) -> OnnxEmbedder:
    embedder = OnnxEmbedder(onnx_dir=onnx_dir)
    embedder.encode(["warm-up"])
    return embedder


def test_instruction_set_detection():
    assert int8_instructions({"avx2", "fma", "avx512f", "avx512bw", "avx512_vnni"}, "x86_64") == "avx512_vnni"
    assert int8_instructions({"avx2", "fma", "avx_vnni"}, "x86_64") == "avx_vnni"
    assert int8_instructions({"avx2", "fma", "avx512f", "avx512bw"}, "x86_64") == "avx512"
    assert int8_instructions({"avx2", "fma"}, "x86_64") == "avx2"
    assert int8_instructions({"avx", "sse4_2"}, "x86_64") is None
    assert int8_instructions(set(), "aarch64") == "neon"
    assert int8_instructions({"avx2", "fma"}, "riscv64") is None
    assert SCHEME.label == "int8-b16"


def test_missing_onnxruntime_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(UserError) as info:
        make_embedder("onnx-int8")
    message = str(info.value)
    assert "\n" not in message
    assert "ROUTER_ENCODER=onnx, onnx-int8, onnx-fp32" in message and onnx_embedder.INSTALL_HINT in message


def test_unknown_encoder():
    with pytest.raises(UserError, match="unknown encoder"):
        make_embedder("tensorrt")
    assert type(make_embedder("torch")) is Embedder


def test_onnx_fp32_is_torch_up_to_float_rounding(onnx_dir):
    fp32 = make_embedder("onnx-fp32", onnx_dir=onnx_dir)
    assert fp32.encoder == "onnx-fp32" and fp32.cache_key.endswith("#onnx-fp32")
    cosine = np.sum(fp32.encode(TEXTS) * Embedder().encode(TEXTS), axis=1)
    assert cosine.min() > 0.99999, cosine


def test_same_api_and_unit_norm(int8):
    vecs = int8.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert int8.encode([]).shape == (0, 384)
    assert int8.dim == 384
    assert int8.model_id == "sentence-transformers/all-MiniLM-L6-v2", "checkpoints match on the model, not the encoder"
    # one text alone or within a pass of others: the same vector (each token's activations are
    # quantised on their own), up to float rounding
    for i, text in enumerate(TEXTS):
        np.testing.assert_allclose(int8.encode([text])[0], vecs[i], atol=1e-5)


def test_export_is_cached_and_keyed(int8, onnx_dir):
    export = int8.export_dir
    assert export is not None and export.parent == onnx_dir
    assert export.name.startswith(f"sentence-transformers-all-MiniLM-L6-v2-{int8.quantization}-")
    assert [p.name for p in onnx_dir.iterdir() if p.name.startswith(".")] == [], "no temporary directory is left"
    stamp = (export / "model.onnx").stat().st_mtime_ns
    again = OnnxEmbedder(onnx_dir=onnx_dir)
    again.encode(["another prompt"])
    assert again.export_dir == export and (export / "model.onnx").stat().st_mtime_ns == stamp, "not exported again"
    assert "onnx" in int8.describe() and str(export) in int8.describe()


def test_disk_cache_keeps_encoders_apart(int8, onnx_dir, tmp_path):
    texts = ["a prompt both encoders embed"]
    onnx_vecs = OnnxEmbedder(cache_dir=tmp_path, onnx_dir=onnx_dir).encode(texts)
    torch_embedder = Embedder(cache_dir=tmp_path)
    torch_vecs = torch_embedder.encode(texts)
    assert torch_embedder.encode_calls == 1, "the torch encoder must not be served the ONNX vector"
    assert not np.array_equal(onnx_vecs, torch_vecs)
    cached = OnnxEmbedder(cache_dir=tmp_path, onnx_dir=onnx_dir)
    np.testing.assert_array_equal(cached.encode(texts), onnx_vecs)
    assert cached.encode_calls == 0 and cached._model is None, "an ONNX cache hit loads nothing"
    with sqlite3.connect(tmp_path / "embeddings.sqlite3") as db:
        models = {row[0] for row in db.execute("SELECT DISTINCT model FROM embedding")}
    assert models == {"sentence-transformers/all-MiniLM-L6-v2", int8.cache_key}


def test_cpu_without_the_instructions_falls_back_to_fp32(monkeypatch, onnx_dir, caplog):
    monkeypatch.setattr(onnx_embedder, "cpu_flags", lambda: {"sse2", "sse4_2"})
    monkeypatch.setattr(onnx_embedder.platform, "machine", lambda: "x86_64")
    with caplog.at_level(logging.WARNING, logger="env.onnx_embedder"):
        embedder = OnnxEmbedder(onnx_dir=onnx_dir)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "without quantisation" in warnings[0].getMessage()
    assert embedder.encoder == "onnx-fp32" and embedder.scheme is None
    assert embedder.cache_key.endswith("#onnx-fp32")
    got = embedder.encode(TEXTS)
    assert "-fp32-" in embedder.export_dir.name
    np.testing.assert_allclose(got, Embedder().encode(TEXTS), atol=1e-4)  # no quantisation: torch up to rounding


def test_concurrent_exports_leave_one_complete_copy(monkeypatch, tmp_path):
    """Two processes exporting at once (threads here, with a stand-in export that waits for the
    other): both get the same complete directory, the loser's copy is dropped."""
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    both_writing = threading.Barrier(2, timeout=30)

    def fake_export(model_path, out, preset):
        (out / "model.onnx").write_text(threading.current_thread().name)
        both_writing.wait()
        (out / "export.json").write_text("{}")
        return {}

    monkeypatch.setattr(onnx_embedder, "_export", fake_export)
    cache = tmp_path / "onnx"
    stale = cache / f".{onnx_embedder.export_path(model, 'some/model', SCHEME, cache).name}.x"
    stale.mkdir(parents=True)  # left by a process killed mid-export an hour ago
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    results: dict[str, Path] = {}

    def start(name: str) -> None:
        results[name] = ensure_export(model, "some/model", SCHEME, cache)

    threads = [threading.Thread(target=start, args=(name,), name=name) for name in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results["one"] == results["two"]
    assert [p.name for p in cache.iterdir()] == [results["one"].name], "one copy, no temporary directory left"
    assert not stale.exists(), "a stale temporary directory is swept"
    assert (results["one"] / "model.onnx").read_text() in ("one", "two")
    assert results["one"].name.startswith("some-model-int8-b16-")
    monkeypatch.setattr(onnx_embedder, "_export", lambda _model, out, _preset: (out / "export.json").write_text("{}"))
    (model / "weights.bin").write_bytes(b"other weights")  # other model files: another export
    assert ensure_export(model, "some/model", SCHEME, cache) != results["one"]


def test_encode_runs_in_several_threads_at_once(int8, onnx_dir):
    assert_encodes_alike_in_threads(OnnxEmbedder(onnx_dir=onnx_dir, batch_size=1), int8)
