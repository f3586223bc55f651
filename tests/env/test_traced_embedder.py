"""The torch encoder as the server runs it (``env/traced_embedder.py``): a TorchScript trace of the
model, cached on disk, that gives sentence-transformers' vectors without importing transformers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from env.embedder import Embedder, resolve_model_path
from env.encoders import make_embedder
from env.traced_embedder import TracedEmbedder
from tests.env.threads import TEXTS as THREAD_TEXTS
from tests.env.threads import assert_encodes_alike_in_threads
from tests.harness import ROOT

TEXTS = ["Route this maths question: what is 17 * 23?", "Write a haiku about queues.", "", "x " * 400,
         "Translate 'good morning' into French, then explain the grammar of the phrase."]


@pytest.fixture(scope="session")
def trace_dir(tmp_path_factory) -> Path:
    """One trace cache for the session (traced once, by the first test using it)."""
    return tmp_path_factory.mktemp("torchscript")


@pytest.fixture(scope="session")
def traced(trace_dir) -> TracedEmbedder:
    embedder = TracedEmbedder(trace_dir=trace_dir)
    embedder.encode(["warm-up"])
    return embedder


@pytest.fixture(scope="session")
def sentence_transformers_embedder() -> Embedder:
    return Embedder(progress=False)


def test_the_trace_gives_sentence_transformers_vectors(traced, sentence_transformers_embedder, trace_dir):
    reference = sentence_transformers_embedder.encode(TEXTS)
    one_by_one = np.stack([traced.encode([t])[0] for t in TEXTS])
    together = traced.encode(TEXTS)  # one padded pass, longest first, as sentence-transformers
    assert together.shape == (len(TEXTS), 384) and together.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(one_by_one, reference, atol=1e-6, rtol=0)
    np.testing.assert_allclose(together, reference, atol=1e-6, rtol=0)
    assert traced.encoder == "torch" and traced.model_id == sentence_transformers_embedder.model_id
    assert traced.dim == 384
    exports = [p for p in trace_dir.iterdir() if p.is_dir()]
    assert len(exports) == 1 and "-all-MiniLM-L6-v2-torchscript-" in exports[0].name
    assert json.loads((exports[0] / "export.json").read_text())["pooling"] == "mean"
    assert traced.describe() == f"torch (TorchScript, {exports[0]})"


def test_the_trace_is_cached_and_its_vectors_kept_apart(traced, trace_dir, tmp_path):
    (export,) = [p for p in trace_dir.iterdir() if p.is_dir()]
    before = export.stat().st_mtime_ns
    again = make_embedder("torch", trace_dir=trace_dir, cache_dir=tmp_path, progress=False)
    assert isinstance(again, TracedEmbedder)
    again.encode(TEXTS[:2])
    assert again.trace_dir_in_use == export and export.stat().st_mtime_ns == before  # not traced again
    plain = make_embedder("torch", cache_dir=tmp_path, progress=False)  # training's: sentence-transformers
    assert type(plain) is Embedder and plain.cache_key != again.cache_key == f"{plain.model_id}#torchscript"
    np.testing.assert_allclose(plain.encode(TEXTS[:2]), again.encode(TEXTS[:2]), atol=1e-6, rtol=0)
    on_gpu = make_embedder("torch", trace_dir=trace_dir, device="cuda")  # a GPU: sentence-transformers
    assert type(on_gpu) is Embedder


def test_a_process_encoding_with_the_trace_never_imports_transformers(traced, trace_dir):
    code = ("import sys; from env.traced_embedder import TracedEmbedder; "
            f"e = TracedEmbedder(trace_dir={str(trace_dir)!r}, progress=False); print(e.encode(['hello']).shape); "
            "print(sorted(m for m in ('transformers', 'sentence_transformers', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["(1, 384)", "[]"]


def test_a_model_the_trace_cannot_pool_runs_with_sentence_transformers(tmp_path, caplog):
    model = tmp_path / "max-pooled"
    shutil.copytree(resolve_model_path("all-MiniLM-L6-v2"), model)
    config = model / "1_Pooling" / "config.json"
    pooling = json.loads(config.read_text())
    pooling.update({k: False for k in pooling if k.startswith("pooling_mode_")} | {"pooling_mode_max_tokens": True})
    config.write_text(json.dumps(pooling))
    traced = TracedEmbedder(model=str(model), trace_dir=tmp_path / "traces", progress=False)
    with caplog.at_level("INFO"):
        vectors = traced.encode(TEXTS[:2])
    assert "running it with sentence-transformers" in caplog.text
    assert traced.describe() == "torch (sentence-transformers)" and not (tmp_path / "traces").exists()
    np.testing.assert_array_equal(vectors, Embedder(str(model), progress=False).encode(TEXTS[:2]))


def test_encode_runs_in_several_threads_at_once(traced, trace_dir):
    assert len(THREAD_TEXTS) > 4
    assert_encodes_alike_in_threads(TracedEmbedder(trace_dir=trace_dir, batch_size=1), traced)
