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


@pytest.mark.parametrize("upgraded", ["torch", "transformers", "sentence-transformers"])
def test_an_upgrade_of_a_library_that_builds_the_graph_moves_the_trace_and_the_export(monkeypatch, tmp_path, upgraded):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    trace = traced_embedder.trace_path(model, "some/model", tmp_path / "ts")
    export = onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx")
    assert traced_embedder.trace_path(model, "some/model", tmp_path / "ts") == trace  # stable while nothing changes
    assert onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx") == export

    monkeypatch.setattr(model_cache, "version", lambda name: "999.0" if name == upgraded else installed(name))
    assert traced_embedder.trace_path(model, "some/model", tmp_path / "ts") != trace
    assert onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx") != export


def test_an_onnx_runtime_upgrade_moves_the_quantised_export_and_not_the_trace(monkeypatch, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(b"weights")
    trace = traced_embedder.trace_path(model, "some/model", tmp_path / "ts")
    export = onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx")
    monkeypatch.setattr(model_cache, "version", lambda name: "999.0" if name == "onnxruntime" else installed(name))
    assert traced_embedder.trace_path(model, "some/model", tmp_path / "ts") == trace
    assert onnx_embedder.export_path(model, "some/model", onnx_embedder.SCHEME, tmp_path / "onnx") != export
