"""The real server with ``ROUTER_ENCODER=onnx-int8``: it exports, serves and says which encoder runs;
without ONNX Runtime it refuses to start with one line naming the install command."""

from __future__ import annotations

import json

import httpx
import pytest
from pydantic import ValidationError

from env.onnx_embedder import INSTALL_HINT
from router.settings import Settings
from tests.harness import Server, make_checkpoint


def test_encoder_setting(monkeypatch):
    assert Settings().encoder == "torch"
    monkeypatch.setenv("ROUTER_ENCODER", "onnx-int8")
    monkeypatch.setenv("ROUTER_ONNX_DIR", "/tmp/exports")
    settings = Settings()
    assert settings.encoder == "onnx-int8" and str(settings.onnx_dir) == "/tmp/exports"
    monkeypatch.setenv("ROUTER_ENCODER", "tensorrt")
    with pytest.raises(ValidationError):
        Settings()


def test_server_routes_with_onnx_int8(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "checkpoints")
    onnx_dir = tmp_path / "onnx"
    server = Server(env={"ROUTER_CHECKPOINT": str(checkpoint), "ROUTER_SQLITE_PATH": str(tmp_path / "exp.sqlite3"),
                         "ROUTER_ENCODER": "onnx-int8", "ROUTER_ONNX_DIR": str(onnx_dir)},
                    log_path=tmp_path / "stderr.log")
    try:
        server.start().wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            assert client.get("/readyz").status_code == 200
            r = client.post("/v1/route", json={"prompt": "What is the integral of x^2 from 0 to 3?"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["agent"] and body["decision_id"]
        lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
        encoder_lines = [line["msg"] for line in lines if line["msg"].startswith("embedding encoder:")]
        assert len(encoder_lines) == 1 and "onnx-int8" in encoder_lines[0], server.log()
        exports = [p for p in onnx_dir.iterdir() if not p.name.startswith(".")]
        assert len(exports) == 1 and exports[0].name in encoder_lines[0]
    finally:
        server.stop()


def test_server_without_onnxruntime_refuses_with_one_line(tmp_path):
    fake = tmp_path / "site" / "onnxruntime"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('No module named onnxruntime')\n")
    server = Server(env={"ROUTER_CHECKPOINT": str(make_checkpoint(tmp_path / "checkpoints")),
                         "ROUTER_SQLITE_PATH": str(tmp_path / "exp.sqlite3"), "ROUTER_ENCODER": "onnx-int8",
                         "ROUTER_ONNX_DIR": str(tmp_path / "onnx"), "PYTHONPATH": str(fake.parent)},
                    log_path=tmp_path / "stderr.log")
    try:
        code = server.start().wait_exit()
        log = server.log()
        assert code != 0, log
        failure = [line for line in log.splitlines() if "cannot start:" in line]
        assert len(failure) == 1 and "ROUTER_ENCODER=onnx-int8" in failure[0] and INSTALL_HINT in failure[0], log
        assert "Traceback" not in log + server.stdout(), log
    finally:
        server.stop()
