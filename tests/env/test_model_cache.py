"""Cache keys of the derived model files (``env/model_cache.py``): a trace or an ONNX export is
rebuilt after an upgrade of a library that builds its graph, and reused otherwise."""

from __future__ import annotations

from importlib.metadata import version as installed

import pytest

from env import model_cache, onnx_embedder, traced_embedder
from env.model_cache import package_versions


def test_package_versions_reads_installed_metadata_and_names_an_absent_package():
    expected = f"torch={installed('torch')};transformers={installed('transformers')}"
    assert package_versions("torch", "transformers") == expected
    assert package_versions("no-such-distribution-here") == "no-such-distribution-here=absent"


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model"
    path.mkdir()
    (path / "weights.bin").write_bytes(b"weights")
    return path


@pytest.mark.parametrize(("upgraded", "trace_moves"), [("torch", True), ("transformers", True),
                                                       ("sentence-transformers", True), ("onnxruntime", False)])
def test_an_upgrade_of_a_library_that_builds_the_graph_moves_the_trace_and_the_export(monkeypatch, tmp_path, model,
                                                                                      upgraded, trace_moves):
    def paths():
        return (traced_embedder.trace_path(model, "some/model", tmp_path / "ts"),
                onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx"))

    trace, export = paths()
    assert paths() == (trace, export)  # stable while nothing changes
    monkeypatch.setattr(model_cache, "version", lambda name: "999.0" if name == upgraded else installed(name))
    new_trace, new_export = paths()
    assert (new_trace != trace) == trace_moves  # ONNX Runtime quantises the export; the trace does not use it
    assert new_export != export


def test_the_model_files_hash_is_kept_for_the_process_but_follows_a_rewritten_or_added_file(model):
    first = model_cache.model_files_hash(model)
    assert model_cache.model_files_hash(model) == first
    key = model_cache.cache_key(model, 1, "a")
    assert key == model_cache.cache_key(model, 1, "a") != model_cache.cache_key(model, 1, "b")

    (model / "weights.bin").write_bytes(b"other weights")  # rewritten in place: another size and mtime
    rewritten = model_cache.model_files_hash(model)
    assert rewritten != first
    (model / "tokenizer.json").write_text("{}")
    assert model_cache.model_files_hash(model) not in (first, rewritten)
