"""The default serving encoder: chosen when a policy is trained (the fastest whose vectors keep at
least 99% of its validation decisions), recorded in policy.json, used and logged by a server started
without ROUTER_ENCODER; a pinned ROUTER_ENCODER still wins."""

from __future__ import annotations

import subprocess
import sys

import httpx

from tests.harness import ROOT


def _encoder_info(server) -> str:
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.post("/v1/route", json={"prompt": "Write a haiku about autumn rain."}).status_code == 200
        line = next(x for x in c.get("/metrics").text.splitlines() if x.startswith("router_encoder_info"))
    return line.split('encoder="')[1].split('"')[0]


def test_training_chooses_the_serving_encoder_and_the_server_uses_it(tmp_path, start_server, embed_cache,
                                                                    shipped_paths):
    prompts, agents = shipped_paths
    out = subprocess.run(
        [sys.executable, "-m", "cli", "train", "--quiet", "-s", f"data.prompts={prompts}",
         "-s", f"data.agents={agents}", "-s", "data.limit=600", "-s", f"embed.cache_dir={embed_cache}",
         "-s", f"out_dir={tmp_path / 'run'}", "-s", f"checkpoint_dir={tmp_path / 'checkpoints'}",
         "-s", "device=cpu", "-s", "network.hidden=[64,64]", "-s", "ppo.total_steps=480",
         "-s", "env.num_worlds=64", "-s", "tensorboard=false"],
        capture_output=True, text=True, cwd=ROOT, timeout=900)
    assert out.returncode == 0, out.stderr
    from policy.checkpoint import load_checkpoint

    policy = load_checkpoint(tmp_path / "checkpoints")
    serving = policy.meta.embedding.serving
    assert serving is not None and serving.min_agreement == 0.99 and serving.prompts >= 50
    assert serving.agreement["torch"] == 1.0 and "onnx-fp32" in serving.agreement
    # the chosen one kept enough decisions and was the fastest of those that did
    assert serving.agreement[serving.encoder] >= 0.99
    assert set(serving.ms_per_prompt) == {name for name, kept in serving.agreement.items() if kept >= 0.99}
    assert serving.ms_per_prompt[serving.encoder] == min(serving.ms_per_prompt.values())
    assert f"serving encoder {serving.encoder}: the fastest that keeps 99%" in out.stdout  # said at training

    env = {"ROUTER_CHECKPOINT": str(tmp_path / "checkpoints"), "ROUTER_SQLITE_PATH": str(tmp_path / "exp.sqlite3")}
    server = start_server(env).wait_ready()
    assert _encoder_info(server) == serving.encoder
    assert f"ROUTER_ENCODER unset: {serving.encoder}, the policy's choice at training" in server.log()
    pinned = start_server(env | {"ROUTER_ENCODER": "torch", "ROUTER_SQLITE_PATH": str(tmp_path / "b.sqlite3")})
    assert _encoder_info(pinned.wait_ready()) == "torch"
    assert "ROUTER_ENCODER=torch: pinned" in pinned.log()
