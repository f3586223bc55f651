"""The real server with ``ROUTER_ENCODER=onnx-int8`` (or ``onnx``: the faster export): it exports, serves and
says which encoder runs; without ONNX Runtime it refuses to start with one line naming the install command."""

from __future__ import annotations

import re

import httpx
import pytest
from pydantic import ValidationError

from env.onnx_embedder import INSTALL_HINT
from router.settings import Settings
from tests.harness import Server, make_checkpoint


def test_encoder_setting(monkeypatch):
    assert Settings().encoder is None  # the policy's own: torch, or static for a policy trained on static vectors
    monkeypatch.setenv("ROUTER_ENCODER", "onnx-int8")
    monkeypatch.setenv("ROUTER_ONNX_DIR", "/tmp/exports")
    settings = Settings()
    assert settings.encoder == "onnx-int8" and str(settings.onnx_dir) == "/tmp/exports"
    for encoder in ("onnx", "onnx-fp32", "static"):
        monkeypatch.setenv("ROUTER_ENCODER", encoder)
        assert Settings().encoder == encoder
    monkeypatch.setenv("ROUTER_ENCODER", "tensorrt")
    with pytest.raises(ValidationError):
        Settings()


def _encoder_exports(onnx_dir):
    """The encoder's exports under ``onnx_dir``: not the temporary directories, not the policies'
    own exports (``heads/``, policy.onnx_head)."""
    return [p for p in onnx_dir.iterdir() if not p.name.startswith(".") and p.name != "heads"]


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
        encoder_lines = [x["msg"] for x in server.json_lines() if x["msg"].startswith("embedding encoder:")]
        assert len(encoder_lines) == 1 and "onnx-int8" in encoder_lines[0], server.log()
        exports = _encoder_exports(onnx_dir)
        assert len(exports) == 1 and exports[0].name in encoder_lines[0]
    finally:
        server.stop()


def test_server_with_onnx_serves_the_faster_export(tmp_path):
    """``ROUTER_ENCODER=onnx``: both exports are made and timed; the faster one serves and is named in the
    log and in /metrics."""
    onnx_dir = tmp_path / "onnx"
    server = Server(env={"ROUTER_CHECKPOINT": str(make_checkpoint(tmp_path / "checkpoints")),
                         "ROUTER_SQLITE_PATH": str(tmp_path / "exp.sqlite3"), "ROUTER_ENCODER": "onnx",
                         "ROUTER_ONNX_DIR": str(onnx_dir), "ROUTER_PLAN_DIR": str(tmp_path / "plans")},
                    log_path=tmp_path / "stderr.log")
    try:
        server.start().wait_ready()
        with httpx.Client(base_url=server.url, timeout=30.0) as client:
            assert client.post("/v1/route", json={"prompt": "Sort this list: 3, 1, 2"}).status_code == 200
            metrics = client.get("/metrics").text
        chosen = re.search(r'^router_encoder_info\{encoder="(onnx-int8|onnx-fp32)"\} 1\.0$', metrics, re.M)
        assert chosen, metrics
        lines = [x["msg"] for x in server.json_lines()]
        timed = [line for line in lines if line.startswith("encoder ")]
        assert len(timed) == 1 and timed[0].startswith(f"encoder {chosen.group(1)} (measured ms per prompt: "), lines
        assert "onnx-int8: " in timed[0] and "onnx-fp32: " in timed[0]
        serving = [line for line in lines if line.startswith("embedding encoder:")]
        assert len(serving) == 1 and serving[0].startswith(f"embedding encoder: {chosen.group(1)} "), lines
        assert len(_encoder_exports(onnx_dir)) == 2
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
        assert len(failure) == 1 and "ONNX encoders" in failure[0] and INSTALL_HINT in failure[0], log
        assert "Traceback" not in log + server.stdout(), log
    finally:
        server.stop()
