"""A user's mistake at the command line: one line on stderr, exit code 2, no traceback."""

import json
import subprocess
import sys

import pytest


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)


def _assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_dataset_line_without_outcomes(tmp_path, shipped_paths):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "hi", "outcomes": {"gemma-2-9b-it": {"quality": 1}}}\n'
                   '{"id": "b", "prompt": "hello"}\n')
    proc = _cli("train", "--set", f"data.prompts={bad}", "--set", f"data.agents={shipped_paths[1]}")
    _assert_one_line_error(proc, f"{bad}:1:", "no outcome for agents")
    bad.write_text('{"id": "b", "prompt": "hello"}\n')
    _assert_one_line_error(_cli("train", "--set", f"data.prompts={bad}", "--set", f"data.agents={shipped_paths[1]}"),
                           f"{bad}:1:", "no outcomes")


def test_agents_file_that_does_not_match(tmp_path, shipped_paths):
    agents = tmp_path / "agents.json"
    agents.write_text(json.dumps({"agents": [{"name": "gpt-4"}, {"name": "mixtral"}]}))
    proc = _cli("train", "--set", f"data.prompts={shipped_paths[0]}", "--set", f"data.agents={agents}")
    _assert_one_line_error(proc, "prompts.jsonl.gz:1:", "not in agents.json")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["train", "--config", "/no/such.yaml"], "config file not found"),
        (["train", "--set", "ppo.lr=-1"], "ppo.lr"),
        (["train", "--set", "nonsense"], "expected key=value"),
        (["eval", "--checkpoint", "/no/such/checkpoint"], "checkpoint not found"),
        (["serve", "--checkpoint", "/no/such/checkpoint"], "checkpoint not found"),
        (["data", "convert", "nope", "--src", ".", "--out", "/tmp/x"], "unknown layout"),
        (["retrain", "--set", "update_epochs=0"], "update_epochs"),
        (["retrain", "--set", "nonsense"], "expected key=value"),
        (["tune", "--set", "eval_every=0", "--trials", "1"], "set eval_every > 0"),
        (["retrain", "--sqlite-path", "/no/such.sqlite3"], "no SQLite experience store"),
        (["retrain", "--redis-url", "redis://127.0.0.1:1/0", "--checkpoint", "/no/such"], "cannot read"),
    ],
)
def test_bad_options(args, needle):
    _assert_one_line_error(_cli(*args), needle)


def test_corrupt_checkpoint_is_refused_by_eval_and_serve(tmp_path):
    from policy.checkpoint import WEIGHTS, save_checkpoint
    from tests.harness import networks_for

    meta = {"agents": ["a", "b"], "capacities": [None, None], "embedding": {"model": "m", "dim": 4},
            "obs_layout": {"embed_dim": 4, "num_agents": 2, "num_routers": 1, "include_agent_id": False},
            "network": {"hidden": [8], "share_params": True, "centralised_critic": True}}
    path = save_checkpoint(tmp_path, *networks_for(meta), meta)
    (path / WEIGHTS).write_bytes(b"\x00" * 64)
    for cmd in ("eval", "serve"):
        _assert_one_line_error(_cli(cmd, "--checkpoint", str(path)), "sha256", "corrupt")


def test_admin_open_on_a_public_bind_refuses_to_start(tmp_path):
    import os

    env = {**os.environ, "ROUTER_ADMIN_OPEN": "true"}
    proc = subprocess.run([sys.executable, "-m", "cli", "serve", "--host", "0.0.0.0", "--checkpoint",
                           str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    _assert_one_line_error(proc, "admin_open needs a loopback host", "ROUTER_ADMIN_TOKEN")
