"""The server harness shared by the tests and the benchmarks: a real checkpoint, a real uvicorn
process on a free loopback port, and a valid decision context.

Importable as ``tests.harness`` from the repository root (the benchmarks put the root on
``sys.path``); it needs no pytest.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
AGENTS = [
    "code-expert",
    "math-solver",
    "general-chat",
    "web-search",
    "translator",
    "summariser",
    "sql-writer",
    "legal-advisor",
    "medical-info",
]
EMBEDDING_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
EMBED_DIM = 384
STARTUP_TIMEOUT_S = 240.0  # generous: CI machines and shared cores start slowly under load


def agent_specs(agents: list[str] = AGENTS) -> list[dict[str, Any]]:
    """``agent_specs`` of the test checkpoint (the dataset's agent record fields)."""
    return [
        {
            "name": name,
            "description": f"{name} specialist",
            "price_per_1m_tokens": None if i % 3 == 0 else 0.5 * (i + 1),
            "cost_per_call_usd": 0.001 * i if i % 3 == 0 else None,
            "capacity": None if i == 4 else 2 + i,
        }
        for i, name in enumerate(agents)
    ]


def checkpoint_content(
    agents: list[str] = AGENTS, capacities: list[int | None] | None = None, hidden: tuple[int, ...] = (64, 64),
    vectors: str = "transformer",
) -> dict[str, Any]:
    """``policy.json`` content (as :func:`policy.checkpoint.save_checkpoint` takes it) of a
    single-router policy over ``agents`` on MiniLM embeddings (``vectors`` ``static``: on static
    embeddings distilled from it, the newest distillation, as a policy trained now).

    With ``capacities`` the agent specs and the meta record them (the server then feeds live load
    into the obs); without, every agent is unbounded (load stays 0).
    """
    from env.static_embedder import DISTILL_VERSION

    specs = agent_specs(agents)
    if capacities is not None:
        specs = [{**spec, "capacity": c} for spec, c in zip(specs, capacities, strict=True)]
    return {
        "agents": list(agents),
        "agent_specs": specs,
        "capacities": list(capacities) if capacities is not None else [None] * len(agents),
        "embedding": {"model": EMBEDDING_MODEL, "dim": EMBED_DIM, "encoder": vectors,
                      "static_version": DISTILL_VERSION if vectors == "static" else None},
        "obs_layout": {"embed_dim": EMBED_DIM, "num_agents": len(agents), "num_routers": 1, "load_clip": 4.0,
                       "include_agent_id": False},
        "network": {"hidden": list(hidden), "share_params": True, "centralised_critic": True},
    }


def networks_for(content: dict[str, Any]):
    """Fresh ``(actor, critic)`` for checkpoint ``content`` (its ``obs_layout`` and ``network``)."""
    from contract.observation import ObsLayout
    from contract.policy_meta import NetworkMeta
    from policy.networks import NetworkShape, build_networks

    return build_networks(NetworkMeta(**content["network"]), NetworkShape.of_layout(ObsLayout(**content["obs_layout"])))


def make_checkpoint(parent: Path, capacities: list[int | None] | None = None,
                    agents: list[str] = AGENTS, vectors: str = "transformer") -> Path:
    """Save a freshly initialised (almost uniform) policy under ``parent`` (on ``vectors``
    embeddings: ``transformer`` or ``static``); its version directory."""
    from policy.checkpoint import save_checkpoint

    content = checkpoint_content(agents, capacities, vectors=vectors)
    actor, critic = networks_for(content)
    return save_checkpoint(parent, actor, critic, content)


def preference_checkpoint(parent: Path, agents: list[str] = AGENTS, cost_weight_max: float = 1000.0) -> Path:
    """A policy of every trade-off (``cost_preference``) whose choice depends on the preference
    alone: ``agents[0]`` at ``cost_weight`` 0, ``agents[1]`` from about 0.2 USD^-1 up."""
    import torch

    from policy.checkpoint import save_checkpoint

    content = checkpoint_content(agents, hidden=(8,))
    content["obs_layout"] |= {"cost_preference": True, "cost_weight_max": cost_weight_max, "default_cost_weight": 0.0}
    actor, critic = networks_for(content)
    first, last = actor.net.net[0], actor.net.net[-1]
    column = EMBED_DIM + len(agents)  # the preference column (contract.observation)
    with torch.no_grad():
        for layer in (first, last):
            layer.weight.zero_()
            layer.bias.zero_()
        first.weight[0, column] = 10.0  # hidden unit 0 = tanh(10 * preference)
        last.weight[1, 0] = 20.0
        last.bias[0] = 5.0
    return save_checkpoint(parent, actor, critic, content)


def priced_checkpoint(parent: Path, agents: list[str] = AGENTS,
                      bias: tuple[float, ...] = (0, 2, -1, -1, -1, -1, 5, -1, 3)) -> Path:
    """A policy of every trade-off with prompt features (``agent_prices`` from :func:`agent_specs`):
    its network ignores the prompt and prefers ``agents`` in the order of ``bias`` (logits), and
    the cost penalty ``cost_weight * ĉ`` moves it to cheaper agents."""
    import torch

    from contract.pricing import AgentPrice
    from policy.checkpoint import save_checkpoint

    content = checkpoint_content(agents, hidden=(8,))
    prices = [AgentPrice(price_per_1m_tokens=s["price_per_1m_tokens"], cost_per_call_usd=s["cost_per_call_usd"])
              for s in agent_specs(agents)]
    content["obs_layout"] |= {"cost_preference": True, "cost_weight_max": 1000.0, "default_cost_weight": 0.0,
                              "agent_prices": [p.model_dump() for p in prices], "cost_scale_usd": 1e-3}
    actor, critic = networks_for(content)
    last = actor.net.net[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor(bias, dtype=torch.float32))
    return save_checkpoint(parent, actor, critic, content)


def sample_context(decision_id: str | None = None, agents: list[str] = AGENTS, **fields: Any):
    """A valid :class:`~contract.experience.DecisionContext` (random unit embedding, uniform policy)."""
    from contract.experience import SCHEMA_VERSION, DecisionContext, encode_embedding

    k = len(agents)
    vec = np.random.default_rng(0).standard_normal(EMBED_DIM).astype(np.float32)
    values: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "decision_id": decision_id or uuid.uuid4().hex,
        "policy_version": "test-v1",
        "created_at": datetime.now(UTC).isoformat(),
        "session_id": None,
        "prompt_sha256": hashlib.sha256(b"a prompt").hexdigest(),
        "embedding": encode_embedding(vec / np.linalg.norm(vec)),
        "load": [0.0] * k,
        "action_mask": [True] * k,
        "action": 0,
        "agent": agents[0],
        "log_prob": float(np.log(1.0 / k)),
        "probabilities": [1.0 / k] * k,
        "explore": False,
        "propensity": 1.0,
        "prompt_tokens": 2,
    }
    values.update(fields)
    return DecisionContext.model_validate(values)


def sample_feedback(quality: float = 0.5, **fields: Any):
    """A valid :class:`~contract.experience.Feedback`, recorded now."""
    from contract.experience import Feedback

    return Feedback.model_validate({"quality": quality, "feedback_at": datetime.now(UTC).isoformat(), **fields})


_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, and never one this process handed out before: a server
    launched early (e.g. the tests' prelaunched ones) may not have bound its port yet when the next
    one asks, and the OS could offer the same port again."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


def stop_process(proc: subprocess.Popen | None, grace_s: float = 10.0) -> None:
    """SIGTERM ``proc`` if it runs, then SIGKILL after ``grace_s``; reap it."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoopbackProcess:
    """A server process on ``127.0.0.1:<port>``: launch it, wait for ``GET /healthz``, read its log,
    stop it. Subclasses are dataclasses with ``log_path``, ``port`` and ``proc`` fields and give
    :meth:`command` and :meth:`environment`.
    """

    log_path: Path
    port: int
    proc: subprocess.Popen | None
    #: how error messages name the process
    what = "server"
    #: seconds between two health checks
    poll_s = 0.1

    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        raise NotImplementedError

    def start(self) -> Self:
        """Launch the process (does not wait)."""
        self._err = self.log_path.open("wb")
        self._out = self.log_path.with_suffix(".stdout").open("wb")
        self.proc = subprocess.Popen(self.command(), cwd=ROOT, env=self.environment(), stdout=self._out,
                                     stderr=self._err)
        return self

    def wait_ready(self, timeout_s: float = STARTUP_TIMEOUT_S, path: str = "/healthz") -> Self:
        """Poll ``path`` (``/healthz``) until it answers 200. A process that lost its port before binding it (something
        else took it after :func:`free_port`) is restarted on another, up to 3 times.

        Raises:
            AssertionError: the process exited or did not get ready in time (with its log).
        """
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        clashes = 0
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                if "address already in use" in self.log() and clashes < 3:
                    clashes += 1
                    self.stop()
                    self.port = free_port()
                    self.start()
                    continue
                raise AssertionError(f"{self.what} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(self.poll_s)
        raise AssertionError(f"{self.what} not ready after {timeout_s} s:\n{self.log()}")

    def log(self) -> str:
        """What the process wrote to stderr so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stdout(self) -> str:
        """What the process wrote to stdout so far."""
        return self.log_path.with_suffix(".stdout").read_text(encoding="utf-8", errors="replace")

    def json_lines(self, until: Callable[[list[dict[str, Any]]], bool] = lambda _: True,
                   timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The JSON lines the process logged (stderr, then stdout), read again every 50 ms until
        ``until(lines)`` holds or ``timeout_s`` has passed: an access-log line is written after
        its response has gone out, so a client may hold the response before the line exists."""
        deadline = time.monotonic() + timeout_s
        while True:
            lines = [json.loads(x) for x in (self.log() + self.stdout()).splitlines() if x.startswith("{")]
            if until(lines) or time.monotonic() > deadline:
                return lines
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        stop_process(self.proc)
        for f in (getattr(self, "_err", None), getattr(self, "_out", None)):
            if f is not None:
                f.close()


@dataclass
class Server(LoopbackProcess):
    """A uvicorn process serving ``router.app:create_app`` on a free loopback port.

    Args:
        env: ``ROUTER_*`` variables (the caller's own ``ROUTER_*`` are dropped).
        log_path: where stderr goes (stdout beside it, ``.stdout``).
    """

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    sqlite_path: Path | None = None
    #: extra uvicorn arguments, e.g. ``["--workers", "2"]``
    uvicorn_args: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "uvicorn", "router.app:create_app", "--factory",
                "--host", "127.0.0.1", "--port", str(self.port), "--no-access-log", *self.uvicorn_args]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTER_")}
        env.update({"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
        env.update(self.env)
        return env

    def wait_exit(self, timeout: float = STARTUP_TIMEOUT_S) -> int:
        """Wait for the process to exit by itself; its exit code."""
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)
